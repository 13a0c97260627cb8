"""Two iked hosts: the tunnel matrix of the issue, each case proven with real traffic.

One parametrized test over IKE version x authentication x tunnel shape (all eight of host/subnet x
v1/v2 x psk/certificate, with rsa and ecdsa both among the certificates), plus IKEv1 over IPv6
(outer and inner) and both versions through a NAT: activate ... wait, both listings show both
phases, ping and a TCP transfer with a checked payload cross the tunnel, tcpdump on the outer link
(from before the negotiation) sees exactly IKE and plain ESP between the gateways when no NAT is in
the way, IKE and ESP-in-UDP through the NAT, and no inner packet, and `ike cmd=remove all` on one
side empties the other side's listing too.

Host-to-host: the selectors are the two outer addresses themselves, so the data plane must keep
IKE out of the tunnel (fwmark bypass) while the ping and TCP between the gateways go inside it.

NAT: iked has no switch to force UDP encapsulation, so host a translates its own source ports
(nftables snat 500 -> 40500, 4500 -> 44500, as a NAT box would): both engines then see NAT-D
mismatch and must float to port 4500 and put ESP in UDP.

Needs root and namespaces: under CI=true a missing prerequisite fails the test.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import require_root, require_tools
from harness.aixvpn import Tunnel
from harness.iked import Iked
from harness.netns import Capture, Host, capture, two_hosts
from harness.pki import make_pki

PSK = "iked matrix test key"

# (version, auth, shape, ip version, wire): "esp" = no NAT, plain ESP; "nat" = a NAT'ed, ESP in UDP.
CASES = [
    (1, "psk", "subnet", 4, "esp"),
    (1, "psk", "host", 4, "esp"),
    (1, "rsa", "host", 4, "esp"),
    (1, "rsa", "subnet", 4, "esp"),
    (2, "psk", "host", 4, "esp"),
    (2, "psk", "subnet", 4, "esp"),
    (2, "rsa", "subnet", 4, "esp"),
    (2, "ecdsa", "host", 4, "esp"),
    (1, "psk", "subnet", 6, "esp"),
    (1, "psk", "subnet", 4, "nat"),
    (2, "psk", "subnet", 4, "nat"),
]
IDS = [f"v{v}-{a}-{s}" + ("-ipv6" if f == 6 else "") + ("-nat" if w == "nat" else "") for v, a, s, f, w in CASES]

SERVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while chunk := c.recv(65536):
    h.update(chunk)
    n += len(chunk)
c.sendall(f"{n} {h.hexdigest()}".encode())
c.close()
"""

CLIENT = """
import os, socket, sys, hashlib
data = bytes.fromhex(sys.argv[4]) * (int(sys.argv[3]) // 32)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20, source_address=(sys.argv[5], 0))
c.sendall(data)
c.shutdown(socket.SHUT_WR)
reply = b""
while chunk := c.recv(4096):
    reply += chunk
print(reply.decode())
"""

TCP_PORT = 5201
TCP_BYTES = 1 << 20


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> Iterator[tuple[Host, Host]]:
    require_root()
    require_tools("ip", "ping", "tcpdump", "nft")
    with two_hosts(v6=getattr(request, "param", 4) == 6) as ab:
        yield ab


def listing(d: Iked, *args: str) -> list[dict[str, Any]]:
    tunnels: list[dict[str, Any]] = json.loads(d.ike("cmd=list", "format=json", *args).stdout)["tunnels"]
    return tunnels


def outer(h: Host, family: int) -> str:
    addr = h.outer6 if family == 6 else h.outer4
    assert addr, f"{h.name} has no IPv{family} address"
    return addr


def tunnels_for(
    a: Host, b: Host, version: int, auth: str, shape: str, tmp: Path, family: int = 4
) -> tuple[Tunnel, Tunnel]:
    kw: dict[str, Any] = {"version": version, "mode": "main", "name": "m"}
    if shape == "subnet":
        if family == 6:
            kw.update(local_net=a.inner_net6, remote_net=b.inner_net6)
        else:
            kw.update(local_net=a.inner_net4, remote_net=b.inner_net4)
    if auth != "psk":
        pki = make_pki(tmp / "pki", {"gw-a": outer(a, family), "gw-b": outer(b, family)}, kind=auth)
        ca, cb = pki.hosts["gw-a"], pki.hosts["gw-b"]
        kw.update(auth=auth, ca=str(pki.ca_cert), cert=str(ca.cert), key=str(ca.key))
        kw.update(peer_cert=str(cb.cert), peer_key=str(cb.key))
    t = Tunnel(outer(a, family), outer(b, family), PSK, **kw)
    return t, t.swapped()


def nat_source_ports(h: Host) -> None:
    """`h` rewrites the source ports of its IKE and NAT-T packets on the way out, as a NAT would;
    conntrack maps the answers back."""
    rules = f"""
table ip iketest_nat {{
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "veth0" udp sport 500 snat to {h.outer4}:40500
        oifname "veth0" udp sport 4500 snat to {h.outer4}:44500
    }}
}}
"""
    h.run(["nft", "-f", "-"], input=rules)


def tcp_transfer(src: Host, dst: Host, src_addr: str, dst_addr: str) -> None:
    """1 MiB from src to dst over TCP; the server's byte count and SHA-256 must match what was sent."""
    pattern = hashlib.sha256(b"matrix").hexdigest()  # 32 bytes as hex
    server = dst.popen([sys.executable, "-c", SERVER, dst_addr, str(TCP_PORT)], stdout=-1, stderr=-1, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", server.stderr.read() if server.stderr else ""
        out = src.run(
            [sys.executable, "-c", CLIENT, dst_addr, str(TCP_PORT), str(TCP_BYTES), pattern, src_addr], timeout=30
        )
        sent = bytes.fromhex(pattern) * (TCP_BYTES // 32)
        assert out.stdout.split() == [str(len(sent)), hashlib.sha256(sent).hexdigest()], out.stdout + out.stderr
    finally:
        server.kill()
        server.wait(5)


def reaches(h: Host, src: str, dst: str) -> bool:
    """One ping; half a second is ample for an answer on a veth and keeps the negative checks cheap."""
    return h.run(["ping", "-n", "-c", "1", "-W", "0.5", "-I", src, dst], check=False).returncode == 0


def check_capture(cap: Capture, a: Host, b: Host, family: int, wire: str) -> None:
    pkts = cap.packets
    assert pkts, "the capture saw nothing"
    kinds = {p.kind for p in pkts}
    # Every packet on the outer link is IKE or ESP between the two gateways, plain ESP unless a NAT
    # is in the way; the ping's ICMP and the transfer's TCP never show in the clear.
    odd = sorted((p.kind, p.src, p.dst, p.sport, p.dport) for p in pkts if p.kind not in ("esp", "esp-in-udp", "ike"))
    if wire == "esp":
        assert kinds == {"ike", "esp"}, (kinds, odd[:10])
    else:
        assert kinds - {"natt-keepalive"} == {"ike", "esp-in-udp"}, (kinds, odd[:10])
        assert {p.sport for p in pkts if p.src == a.outer4} <= {40500, 44500}, "a's ports were not translated"
    assert all({p.src, p.dst} == {outer(a, family), outer(b, family)} for p in pkts)
    assert {p.version for p in pkts} == {family}
    esp = [p for p in pkts if p.kind in ("esp", "esp-in-udp")]
    assert sum(p.length for p in esp) > TCP_BYTES, "the transfer did not travel as ESP"


# IPv4 only on v4 cases: the link-local MLD chatter of veth0 is not ours. On IPv6 every ESP, UDP,
# TCP and ICMPv6 echo packet, so cleartext ping or TCP would show, but not neighbour discovery or MLD.
CAPTURE_FILTER = {4: "ip", 6: "ip6 and (ip6 proto 50 or udp or tcp or (ip6 proto 58 and ip6[40] < 130))"}


@pytest.mark.parametrize(
    ("hosts", "version", "auth", "shape", "family", "wire"),
    [(f, v, a, s, f, w) for v, a, s, f, w in CASES],
    ids=IDS,
    indirect=["hosts"],
)
def test_matrix(
    hosts: tuple[Host, Host], tmp_path: Path, version: int, auth: str, shape: str, family: int, wire: str
) -> None:
    a, b = hosts
    ta, tb = tunnels_for(a, b, version, auth, shape, tmp_path, family)
    # The addresses that talk through the tunnel: the inside ones, or the gateways themselves.
    if shape == "host":
        src, dst = outer(a, family), outer(b, family)
    elif family == 6:
        assert a.inner6 and b.inner6
        src, dst = a.inner6, b.inner6
    else:
        src, dst = a.inner4, b.inner4
    if wire == "nat":
        nat_source_ports(a)
    with Iked(a) as ia, Iked(b) as ib:
        ia.put(ta.xml())
        ib.put(tb.xml())
        if shape == "subnet":
            assert not reaches(a, src, dst)  # no tunnel, no route

        with capture(a, "veth0", CAPTURE_FILTER[family]) as cap:
            out = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
            assert "phase 2 tunnel m-child (database tunnel 1): established" in out.stdout, out.stdout + ia.log(40)

            for d, role in ((ia, "i"), (ib, "r")):
                (t1,) = listing(d)
                assert (t1["state"], t1["role"], t1["version"]) == ("established", role, version), t1
                (c1,) = t1["phase2"]
                assert c1["state"] == "established", c1
                assert c1["udp_encap"] is (wire == "nat"), c1
                assert t1["auth"] is not None
            text = ia.ike("cmd=list").stdout
            assert "Active" in text and text.count("Initiator") == 2, text
            sel = ib.ike("cmd=list", "format=json").stdout
            if shape == "host":
                plen = 128 if family == 6 else 32
                want_ts = [f"{outer(b, family)}/{plen}", f"{outer(a, family)}/{plen}"]
            else:
                want_ts = [tb.local_net, tb.remote_net]
            c_b = json.loads(sel)["tunnels"][0]["phase2"][0]
            got = [[str(ipaddress.ip_network(x)) for x in c_b[k]] for k in ("local_ts", "remote_ts")]
            assert got == [[want_ts[0]], [want_ts[1]]], c_b

            ping = a.ping(dst, count=3, src=src)
            assert ping.returncode == 0, ping.stdout + ping.stderr + ia.log(40)
            tcp_transfer(a, b, src, dst)
        check_capture(cap, a, b, family, wire)
        (c1,) = listing(ia)[0]["phase2"]
        assert c1["packets_out"] >= 3 and c1["bytes_out"] >= TCP_BYTES, c1

        ia.ike("cmd=remove", "all")
        assert listing(ia) == []
        deadline = time.monotonic() + 5
        while (live := [t for t in listing(ib) if t["state"] == "established"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live == [], json.dumps(listing(ib), indent=1) + ib.log(30)
        assert all(c["state"] != "established" for t in listing(ib) for c in t.get("phase2", [])), listing(ib)
        if shape == "subnet":
            assert not reaches(a, src, dst)  # the tunnel was the only way
        assert ia.alive() and ib.alive()


# --- lifetimes, ESN, default listen -------------------------------------------------------------------


def esp_options(xml: str, kb: int | None = None, esn: bool = False) -> str:
    """Tunnel.xml() with a phase 2 lifetime in KB and/or ESN on its ESP transforms."""
    if kb is not None:
        xml, n = re.subn(r'(IPSec_KeyRefreshSeconds="\d+")', rf'\1 IPSec_KeyRefreshKB="{kb}"', xml)
        assert n == 1, xml
    if esn:
        xml, n = re.subn(r"<IPSecESPProtocol ", '<IPSecESPProtocol ESP_ExtendedSeqNum="Yes" ', xml)
        assert n >= 1, xml
    return xml


def child_of(d: Iked) -> dict[str, Any]:
    (t,) = [t for t in listing(d, "verbose") if t["state"] == "established"]
    (c,) = t["phase2"]
    assert c["state"] == "established", c
    return dict(c)


def up(ia: Iked, ib: Iked, ta: Tunnel, tb: Tunnel, **opts: Any) -> None:
    ia.put(esp_options(ta.xml(), **opts))
    ib.put(esp_options(tb.xml(), **opts))
    out = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
    assert "phase 2 tunnel m-child (database tunnel 1): established" in out.stdout, out.stdout + ia.log(40)


@pytest.mark.parametrize("version", [1, 2])
def test_kb_lifetime_rekeys_under_traffic(hosts: tuple[Host, Host], tmp_path: Path, version: int) -> None:
    # 100 KB per SA, time lifetime an hour: only the bytes can bring the rekeys. 250 pings of 1 KB
    # each way use up more than two SAs; at most a few may be lost while they change.
    a, b = hosts
    ta, tb = tunnels_for(a, b, version, "psk", "subnet", tmp_path)
    with Iked(a) as ia, Iked(b) as ib:
        up(ia, ib, ta, tb, kb=100)
        before = child_of(ia)
        assert (before["lifetime_kb"], before["rekeys"]) == (100, 0), before
        assert before["kb_left"] is not None and 90 <= before["kb_left"] <= 100, before
        assert "100 KB (" in ia.ike("cmd=list", "phase=2", "verbose").stdout
        flood = a.run(
            ["ping", "-n", "-q", "-c", "250", "-i", "0.005", "-s", "1000", "-I", a.inner4, b.inner4],
            check=False,
            timeout=30,
        )
        got = re.search(r"(\d+) packets transmitted, (\d+) received", flood.stdout)
        assert got, flood.stdout + flood.stderr
        assert int(got[2]) >= int(got[1]) - 3, flood.stdout + ia.log(40)
        after = child_of(ia)
        assert after["rekeys"] >= 2 and after["tunnel"] == before["tunnel"], json.dumps(after) + ia.log(40)
        assert after["spi_in"] != before["spi_in"] and after["lifetime_kb"] == 100, after
        assert 0 <= after["kb_left"] <= 100, after  # the current SA's own, not a sum over rekeys
        assert "reached its soft lifetime" in ia.log(200) + ib.log(200)
        assert child_of(ib)["rekeys"] >= 1
        assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0, ia.log(40)
        assert ia.alive() and ib.alive()


@pytest.mark.parametrize("version", [1, 2])
def test_esn_negotiated_and_carrying_traffic(hosts: tuple[Host, Host], tmp_path: Path, version: int) -> None:
    # Both data planes must agree on ESN (it is in the AEAD's AAD): traffic only passes if they do.
    a, b = hosts
    ta, tb = tunnels_for(a, b, version, "psk", "subnet", tmp_path)
    with Iked(a) as ia, Iked(b) as ib:
        up(ia, ib, ta, tb, esn=True)
        for d in (ia, ib):
            assert child_of(d)["proposal"].endswith("/esn"), child_of(d)
        assert "aes-gcm-16-256/esn" in ia.ike("cmd=list", "verbose").stdout
        assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0, ia.log(40)
        tcp_transfer(a, b, a.inner4, b.inner4)
        assert child_of(ia)["bytes_out"] >= TCP_BYTES


def test_default_wildcard_listen_with_auto_dataplane(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    # As the systemd unit runs it: no --listen (0.0.0.0 and ::) and --dataplane auto. Through a NAT,
    # so ESP-in-UDP arrives on the wildcard port-4500 sockets iked reads itself, both ways.
    a, b = hosts
    ta, tb = tunnels_for(a, b, 2, "psk", "subnet", tmp_path)
    nat_source_ports(a)
    with Iked(a, dataplane="auto", listen=[]) as ia, Iked(b, dataplane="auto", listen=[]) as ib:
        for d in (ia, ib):
            # iked logs that it started just after its control socket appears, which is what
            # Iked() waits for: give the line a moment.
            deadline = time.monotonic() + 5
            while "iked started" not in (log := d.log(50)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "listening on 0.0.0.0,:: ports 500/4500" in log, log
            assert "data plane XfrmDataPlane" in log or "using userspace ESP over TUN" in log, log
        with capture(b, "veth0", "ip") as cap:
            up(ia, ib, ta, tb)
            assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0, ia.log(40)
            tcp_transfer(a, b, a.inner4, b.inner4)
        assert cap.kinds() - {"natt-keepalive"} == {"ike", "esp-in-udp"}, cap.kinds()
        c = child_of(ia)
        assert c["udp_encap"] is True and (c["local"], c["remote"]) == (a.outer4, b.outer4), c
        assert child_of(ib)["bytes_in"] >= TCP_BYTES
