"""Two iked hosts: the tunnel matrix of the issue, each case proven with real traffic.

One parametrized test over IKE version x authentication x tunnel shape (a subset that still covers
every value of every axis, and both shapes with certificates): activate ... wait, both listings
show both phases, ping and a TCP transfer with a checked payload cross the tunnel, tcpdump on the
outer link sees only IKE and (UDP-encapsulated) ESP between the gateways and no inner packet, and
`ike cmd=remove all` on one side empties the other side's listing too.

Host-to-host: the selectors are the two outer addresses themselves, so the data plane must keep
IKE out of the tunnel (fwmark bypass) while the ping and TCP between the gateways go inside it.

Needs root and namespaces: under CI=true a missing prerequisite fails the test.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
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

# (version, auth, shape): psk, rsa and ecdsa each appear; both versions; both shapes overall and
# both shapes with certificates; v1 with psk and with certificates.
CASES = [
    (1, "psk", "subnet"),
    (1, "rsa", "host"),
    (2, "psk", "host"),
    (2, "rsa", "subnet"),
    (2, "ecdsa", "host"),
]

SERVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
def hosts() -> Iterator[tuple[Host, Host]]:
    require_root()
    require_tools("ip", "ping", "tcpdump")
    with two_hosts() as ab:
        yield ab


def listing(d: Iked) -> list[dict[str, Any]]:
    tunnels: list[dict[str, Any]] = json.loads(d.ike("cmd=list", "format=json").stdout)["tunnels"]
    return tunnels


def tunnels_for(a: Host, b: Host, version: int, auth: str, shape: str, tmp: Path) -> tuple[Tunnel, Tunnel]:
    kw: dict[str, Any] = {"version": version, "mode": "main", "name": "m"}
    if shape == "subnet":
        kw.update(local_net=a.inner_net4, remote_net=b.inner_net4)
    if auth != "psk":
        pki = make_pki(tmp / "pki", {"gw-a": a.outer4, "gw-b": b.outer4}, kind=auth)
        ca, cb = pki.hosts["gw-a"], pki.hosts["gw-b"]
        kw.update(auth=auth, ca=str(pki.ca_cert), cert=str(ca.cert), key=str(ca.key))
        kw.update(peer_cert=str(cb.cert), peer_key=str(cb.key))
    t = Tunnel(a.outer4, b.outer4, PSK, **kw)
    return t, t.swapped()


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


def check_capture(cap: Capture, a: Host, b: Host) -> None:
    pkts = cap.packets
    assert pkts, "the capture saw nothing"
    kinds = {p.kind for p in pkts}
    # Every packet on the outer link is IKE or ESP (plain or in UDP) between the two gateways;
    # the ping's ICMP and the transfer's TCP never show in the clear.
    assert kinds <= {"esp", "esp-in-udp", "ike", "natt-keepalive"}, sorted(
        (p.kind, p.src, p.dst, p.sport, p.dport) for p in pkts if p.kind not in ("esp", "esp-in-udp", "ike")
    )[:10]
    assert kinds & {"esp", "esp-in-udp"}, kinds
    assert all({p.src, p.dst} == {a.outer4, b.outer4} for p in pkts)
    esp = [p for p in pkts if p.kind in ("esp", "esp-in-udp")]
    assert sum(p.length for p in esp) > TCP_BYTES, "the transfer did not travel as ESP"


@pytest.mark.parametrize(("version", "auth", "shape"), CASES, ids=[f"v{v}-{a}-{s}" for v, a, s in CASES])
def test_matrix(hosts: tuple[Host, Host], tmp_path: Path, version: int, auth: str, shape: str) -> None:
    a, b = hosts
    ta, tb = tunnels_for(a, b, version, auth, shape, tmp_path)
    # The addresses that talk through the tunnel: the inside ones, or the gateways themselves.
    src, dst = (a.inner4, b.inner4) if shape == "subnet" else (a.outer4, b.outer4)
    with Iked(a) as ia, Iked(b) as ib:
        ia.put(ta.xml())
        ib.put(tb.xml())
        if shape == "subnet":
            assert a.ping(dst, count=1, src=src).returncode != 0  # no tunnel, no route
        out = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
        assert "phase 2 tunnel m-child (database tunnel 1): established" in out.stdout, out.stdout + ia.log(40)

        for d, role in ((ia, "i"), (ib, "r")):
            (t1,) = listing(d)
            assert (t1["state"], t1["role"], t1["version"]) == ("established", role, version), t1
            (c1,) = t1["phase2"]
            assert c1["state"] == "established", c1
            assert t1["auth"] is not None
        text = ia.ike("cmd=list").stdout
        assert "Active" in text and text.count("Initiator") == 2, text
        sel = ib.ike("cmd=list", "format=json").stdout
        want_ts = [f"{b.outer4}/32", f"{a.outer4}/32"] if shape == "host" else [b.inner_net4, a.inner_net4]
        c_b = json.loads(sel)["tunnels"][0]["phase2"][0]
        got = [[str(ipaddress.ip_network(x)) for x in c_b[k]] for k in ("local_ts", "remote_ts")]
        assert got == [[want_ts[0]], [want_ts[1]]], c_b

        # IPv4 only: the link-local MLD chatter of veth0 is not ours (the tunnels carry IPv4).
        with capture(a, "veth0", "ip") as cap:
            ping = a.ping(dst, count=3, src=src)
            assert ping.returncode == 0, ping.stdout + ping.stderr + ia.log(40)
            tcp_transfer(a, b, src, dst)
        check_capture(cap, a, b)
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
            assert a.ping(dst, count=1, src=src).returncode != 0  # the tunnel was the only way
        assert ia.alive() and ib.alive()
