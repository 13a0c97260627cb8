"""The userspace ESP data plane carries real traffic between two namespaces: subnet-to-subnet and
host-to-host, IPv4 and IPv6, ESP-in-UDP and plain ESP; the wire shows only ESP for that traffic.

Each host runs `python -m ike.dataplane.manual` (static SAs from the command line, random keys)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import ike
from harness import require, require_root, require_tools
from harness.netns import Host, capture, existing_namespaces, new_ns_name, two_hosts
from ike.proto.transforms import ENCR, INTEG

# The namespace processes must run the same `ike` this test imported (not whatever is installed).
_ENV = {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(ike.__file__)))}


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "ping", "tcpdump")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing (no TUN support)")


def _keys(encr: str, keylen: int, integ: str | None) -> dict[str, str]:
    k = {
        "key_ab": secrets.token_hex(ENCR[encr].key_material_len(keylen)),
        "key_ba": secrets.token_hex(ENCR[encr].key_material_len(keylen)),
    }
    if integ:
        k["ikey_ab"] = secrets.token_hex(INTEG[integ].key_len)
        k["ikey_ba"] = secrets.token_hex(INTEG[integ].key_len)
    return k


def _cmd(
    local: str,
    remote: str,
    lts: list[str],
    rts: list[str],
    spi_in: str,
    spi_out: str,
    kin: str,
    kout: str,
    encr: str,
    keylen: int,
    integ: str | None,
    ikin: str | None,
    ikout: str | None,
    udp: bool,
    extra: list[str],
) -> list[str]:
    cmd = [sys.executable, "-m", "ike.dataplane.manual", "--local", local, "--remote", remote]
    for t in lts:
        cmd += ["--local-ts", t]
    for t in rts:
        cmd += ["--remote-ts", t]
    cmd += ["--spi-in", spi_in, "--spi-out", spi_out, "--encr", encr, "--keylen", str(keylen)]
    cmd += ["--key-in", kin, "--key-out", kout]
    if integ:
        cmd += ["--integ", integ, "--ikey-in", ikin or "", "--ikey-out", ikout or ""]
    if not udp:
        cmd.append("--no-udp")
    return cmd + extra


@contextmanager
def tunnel(
    a: Host,
    b: Host,
    a_ts: list[str],
    b_ts: list[str],
    outer: tuple[str, str],
    encr: str = "aes-gcm-16",
    keylen: int = 128,
    integ: str | None = None,
    udp: bool = True,
    extra: list[str] | None = None,
    extra_a: list[str] | None = None,
    extra_b: list[str] | None = None,
) -> Iterator[dict[str, dict[str, object]]]:
    """Run the manual data plane in both hosts; yields a dict filled with each side's final counters.
    `extra` goes to both command lines, `extra_a`/`extra_b` to one."""
    k = _keys(encr, keylen, integ)
    env = _ENV
    procs = {}
    specs = {
        "a": (
            a,
            outer[0],
            outer[1],
            a_ts,
            b_ts,
            "a001",
            "b001",
            k["key_ba"],
            k["key_ab"],
            k.get("ikey_ba"),
            k.get("ikey_ab"),
        ),
        "b": (
            b,
            outer[1],
            outer[0],
            b_ts,
            a_ts,
            "b001",
            "a001",
            k["key_ab"],
            k["key_ba"],
            k.get("ikey_ab"),
            k.get("ikey_ba"),
        ),
    }
    result: dict[str, dict[str, object]] = {}
    try:
        for name, (h, lo, re, lts, rts, si, so, kin, kout, ikin, ikout) in specs.items():
            own = (extra_a if name == "a" else extra_b) or []
            cmd = _cmd(lo, re, lts, rts, si, so, kin, kout, encr, keylen, integ, ikin, ikout, udp, (extra or []) + own)
            p = h.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            procs[name] = p
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                p.kill()
                raise AssertionError(
                    f"data plane in {h.name} did not start: {line}{p.stderr.read() if p.stderr else ''}"
                )
        yield result
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.terminate()
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
            result[name] = json.loads(lines[-1]) if lines else {"stderr": err}


def _only_esp(cap_packets: list, a_out: str, b_out: str, udp: bool) -> None:
    kinds = {p.kind for p in cap_packets}
    assert kinds, "the capture saw nothing: the traffic did not cross the veth"
    allowed = {"esp-in-udp"} if udp else {"esp"}
    odd = [p for p in cap_packets if p.kind not in allowed]
    assert not odd, f"cleartext on the wire (expected only {allowed}): {odd[:5]}"
    assert all({p.src, p.dst} == {a_out, b_out} for p in cap_packets)


@pytest.mark.parametrize(
    ("encr", "keylen", "integ", "udp"),
    [
        ("aes-gcm-16", 128, None, True),
        ("chacha20-poly1305", 256, None, False),
        ("aes-cbc", 256, "hmac-sha2-256-128", True),
    ],
    ids=["gcm-udp", "chacha-esp", "cbc-sha256-udp"],
)
def test_subnet_to_subnet_v4(encr: str, keylen: int, integ: str | None, udp: bool) -> None:
    with two_hosts() as (a, b):
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4), encr, keylen, integ, udp) as res:
            bpf = "udp port 4500" if udp else "ip proto 50"
            with capture(b, "veth0", f"{bpf} or icmp or tcp") as cap:
                r = a.ping(b.inner4, count=5, src=a.inner4)
                assert r.returncode == 0, r.stdout + r.stderr
                # a TCP transfer: 2 MB through nc-free python sockets on both ends
                _tcp_transfer(a, b, b.inner4, a.inner4)
            _only_esp(cap.packets, a.outer4, b.outer4, udp)
        for side in ("a", "b"):
            assert res[side]["packets_in"] >= 5 and res[side]["packets_out"] >= 5, res
            assert res[side]["dropped_in"] == 0, res
        assert res["b"]["bytes_in"] > 2_000_000, res


def _tcp_transfer(a: Host, b: Host, server_ip: str, client_ip: str, size: int = 2_000_000) -> None:
    srv = (
        "import socket,sys,hashlib;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET);"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((sys.argv[1],5201));s.listen(1);"
        "print('listening',flush=True);c,_=s.accept();h=hashlib.sha256();n=0\n"
        "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\n"
        "print(n,h.hexdigest(),flush=True)"
    )
    p = b.popen([sys.executable, "-c", srv, server_ip], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening"
    data = secrets.token_bytes(size)
    cli = (
        "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET);"
        "s.bind((sys.argv[2],0));s.connect((sys.argv[1],5201));s.sendall(sys.stdin.buffer.read());s.close()"
    )
    subprocess.run(
        [*a.exec_prefix(), sys.executable, "-c", cli, server_ip, client_ip], input=data, check=True, timeout=60
    )
    out, _ = p.communicate(timeout=60)

    assert out.split() == [str(size), hashlib.sha256(data).hexdigest()]


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "esp"])
def test_host_to_host_v4(udp: bool) -> None:
    """The peer's own address is routed into the tunnel; the ESP packets to it must still leave."""
    with two_hosts() as (a, b):
        with tunnel(a, b, [f"{a.outer4}/32"], [f"{b.outer4}/32"], (a.outer4, b.outer4), udp=udp) as res:
            bpf = "udp port 4500" if udp else "ip proto 50"
            with capture(b, "veth0", f"{bpf} or icmp or tcp") as cap:
                r = a.ping(b.outer4, count=5)
                assert r.returncode == 0, r.stdout + r.stderr
                _tcp_transfer(a, b, b.outer4, a.outer4, 500_000)
            _only_esp(cap.packets, a.outer4, b.outer4, udp)
        assert res["a"]["packets_out"] >= 5 and res["b"]["packets_in"] >= 5, res


def test_subnet_to_subnet_v6_outer_and_inner_both_families() -> None:
    with two_hosts(v6=True) as (a, b):
        assert a.outer6 and b.outer6 and a.inner6 and b.inner6 and a.inner_net6 and b.inner_net6
        ats, bts = [a.inner_net4, a.inner_net6], [b.inner_net4, b.inner_net6]
        with tunnel(a, b, ats, bts, (a.outer6, b.outer6), "aes-gcm-16", 256, None, True):
            with capture(b, "veth0", "udp port 4500 or icmp or icmp6 and not ip6[40] >= 133 or tcp") as cap:
                assert a.ping(b.inner6, count=3, src=a.inner6).returncode == 0
                assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0
                _tcp_transfer(a, b, b.inner6, a.inner6, 300_000)
            _only_esp(cap.packets, a.outer6, b.outer6, True)


def test_host_to_host_v6_plain_esp() -> None:
    with two_hosts(v6=True) as (a, b):
        assert a.outer6 and b.outer6
        with tunnel(a, b, [f"{a.outer6}/128"], [f"{b.outer6}/128"], (a.outer6, b.outer6), udp=False):
            with capture(b, "veth0", "ip6 proto 50 or icmp6 and not ip6[40] >= 133") as cap:
                r = a.ping(b.outer6, count=3)
                assert r.returncode == 0, r.stdout + r.stderr
            _only_esp(cap.packets, a.outer6, b.outer6, False)


def test_wrong_key_carries_nothing_and_counts_drops() -> None:
    """A peer with other keys: pings fail, the receiver counts ICV failures, nothing leaks."""
    with two_hosts() as (a, b):
        k1, k2 = _keys("aes-gcm-16", 128, None), _keys("aes-gcm-16", 128, None)
        env = _ENV
        pa = a.popen(
            _cmd(
                a.outer4,
                b.outer4,
                [a.inner_net4],
                [b.inner_net4],
                "a001",
                "b001",
                k1["key_ba"],
                k1["key_ab"],
                "aes-gcm-16",
                128,
                None,
                None,
                None,
                True,
                [],
            ),
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        pb = b.popen(
            _cmd(
                b.outer4,
                a.outer4,
                [b.inner_net4],
                [a.inner_net4],
                "b001",
                "a001",
                k2["key_ab"],
                k2["key_ba"],
                "aes-gcm-16",
                128,
                None,
                None,
                None,
                True,
                [],
            ),
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert pa.stdout and pb.stdout
        assert pa.stdout.readline().strip() == "ready" and pb.stdout.readline().strip() == "ready"
        assert a.ping(b.inner4, count=3, src=a.inner4, timeout=8).returncode != 0
        pb.terminate()
        res = json.loads([ln for ln in pb.communicate(timeout=10)[0].splitlines() if ln.startswith("{")][-1])
        assert res["dropped_in"] >= 3 and res["packets_in"] == 0, res


def test_namespaces_are_gone_afterwards() -> None:
    names: list[str] = []
    with two_hosts() as (a, b):
        names = [a.name, b.name]
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4)):
            pass
    assert not set(names) & existing_namespaces()


def test_iperf3_throughput_aes_gcm_128(capsys: pytest.CaptureFixture[str]) -> None:
    """Throughput smoke figure for the report (printed); fails only if the tunnel barely moves data."""
    require_tools("iperf3")
    secs = float(os.environ.get("IKE_IPERF_SECONDS", "5"))
    with two_hosts() as (a, b):
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4)) as res:
            srv = b.popen(["iperf3", "-s", "-1", "-B", b.inner4], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            out = a.run(["iperf3", "-c", b.inner4, "-B", a.inner4, "-t", str(secs), "-J"], timeout=secs + 30)
            srv.wait(10)
        rep = json.loads(out.stdout)
        mbit = rep["end"]["sum_received"]["bits_per_second"] / 1e6
        with capsys.disabled():
            print(f"\n[dataplane] iperf3 TCP through userspace ESP (aes-gcm-16-128, ESP-in-UDP): {mbit:.0f} Mbit/s")
        assert mbit > 20, rep["end"]
        assert res["b"]["dropped_in"] == 0, res


def test_daemon_owned_socket_api() -> None:
    """receive_udp_esp / set_udp_sender: the daemon keeps port 4500 and hands ESP over."""
    with two_hosts() as (a, b):
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4), extra=["--daemon-socket"]) as res:
            with capture(b, "veth0", "udp port 4500 or icmp or tcp") as cap:
                assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0
                _tcp_transfer(a, b, b.inner4, a.inner4, 300_000)
            _only_esp(cap.packets, a.outer4, b.outer4, True)
        assert res["b"]["bytes_in"] >= 300_000 and res["a"]["dropped_in"] == 0, res


def test_byte_lifetime_soft_then_hard_stops_traffic() -> None:
    with two_hosts() as (a, b):
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4), extra=["--lifetime-kb", "64"]) as res:
            assert a.ping(b.inner4, count=1, src=a.inner4).returncode == 0
            # 70 pings of 1000 bytes: past 90% (soft) and 100% (hard) of 64 KiB on both SAs
            a.run(["ping", "-n", "-q", "-c", "70", "-i", "0.01", "-s", "1000", "-I", a.inner4, b.inner4], check=False)
            assert a.ping(b.inner4, count=2, src=a.inner4, timeout=6).returncode != 0
        assert res["a"]["expiries"] == [[1, "soft"], [1, "hard"]], res
        assert 60_000 <= res["a"]["bytes_out"] <= 66_000, res
        assert res["a"]["kb_left"] == 0, res  # the hard limit was reached: nothing left


def test_counters_report_kilobytes_left_of_a_kb_lifetime() -> None:
    # 1000 KiB each way: what is left is the limit less the busier SA's inner bytes, in whole KiB;
    # without a KB lifetime there is nothing to report.
    with (
        two_hosts() as (a, b),
        tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4), extra_a=["--lifetime-kb", "1000"]) as res,
    ):
        assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0
        _tcp_transfer(a, b, b.inner4, a.inner4, 200_000)
    ra, rb = res["a"], res["b"]
    used = max(int(ra["bytes_in"]), int(ra["bytes_out"]))  # type: ignore[call-overload]
    assert used > 200_000, ra
    assert ra["kb_left"] == (1000 * 1024 - used) // 1024, ra
    assert rb["kb_left"] is None, rb


def test_host_to_host_ike_socket_bypasses_the_tunnel() -> None:
    """With the peer's own address routed into the tunnel, a socket given to bypass_socket() still
    reaches the peer directly (IKE on port 500), while the same datagram from an ordinary socket is
    carried inside ESP."""
    send = (
        "import socket,sys\n"
        "from ike.dataplane.userspace import UserspaceDataPlane\n"
        "for marked in (True, False):\n"
        "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "    if marked: UserspaceDataPlane().bypass_socket(s)\n"
        "    s.bind((sys.argv[1], 0)); s.sendto(b'IKE!' * 10, (sys.argv[2], 500)); s.close()\n"
    )
    with two_hosts() as (a, b):
        with (
            tunnel(a, b, [f"{a.outer4}/32"], [f"{b.outer4}/32"], (a.outer4, b.outer4)),
            capture(b, "veth0", "udp") as cap,
        ):
            a.run([sys.executable, "-c", send, a.outer4, b.outer4], env=_ENV)
            time.sleep(0.3)
        # (b answers "port unreachable" through the tunnel: look at what a sent)
        kinds = sorted(p.kind for p in cap.packets if p.src == a.outer4)
        assert kinds == ["esp-in-udp", "ike"], cap.packets
        (ike,) = [p for p in cap.packets if p.kind == "ike"]
        assert ike.dport == 500 and ike.src == a.outer4


_MARK = str(0x494B45)  # the data plane's bypass mark: a ping carrying it skips the tunnel's routing rule


def _bypass_ping(b: Host, dst: str, src: str, via: str) -> subprocess.CompletedProcess[str]:
    """From b, a cleartext ping to `dst` from `src` that goes straight over the veth (not the tunnel)."""
    v = "-6" if ":" in dst else "-4"
    prefix = f"{dst}/{128 if ':' in dst else 32}"
    b.run(["ip", v, "route", "replace", prefix, "via", via, "dev", "veth0"])
    return b.run(["ping", v, "-n", "-c", "2", "-i", "0.2", "-W", "1", "-m", _MARK, "-I", src, dst], check=False)


def _drops(host: Host) -> int:
    """Packets counted by the drop rules of the data plane's nftables table."""
    out = host.run(["nft", "-j", "list", "table", "inet", "ike"]).stdout
    n = 0
    for item in json.loads(out)["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                n += e["counter"]["packets"]
    return n


@pytest.mark.parametrize("filtered", [True, False], ids=["filter", "no-filter"])
def test_cleartext_bypassing_the_tunnel_is_dropped(filtered: bool) -> None:
    """Cleartext from the remote selectors to the local ones that arrives on the veth (not through the
    TUN device) is dropped, both families; tunnelled traffic passes. Without the filter the same
    bypass ping is answered, which shows the bypass really skipped the tunnel."""
    require_tools("nft")
    with two_hosts(v6=True) as (a, b):
        assert a.inner6 and b.inner6 and a.inner_net6 and b.inner_net6 and a.outer6
        ats, bts = [a.inner_net4, a.inner_net6], [b.inner_net4, b.inner_net6]
        extra = [] if filtered else ["--no-filter"]
        with tunnel(a, b, ats, bts, (a.outer4, b.outer4), extra=extra):
            assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0
            assert a.ping(b.inner6, count=2, src=a.inner6).returncode == 0
            with capture(a, "veth0", "icmp or icmp6 and not ip6[40] >= 133") as cap:
                r4 = _bypass_ping(b, a.inner4, b.inner4, a.outer4)
                r6 = _bypass_ping(b, a.inner6, b.inner6, a.outer6)
            sent = [p for p in cap.packets if p.src in (b.inner4, b.inner6)]
            assert {p.src for p in sent} == {b.inner4, b.inner6}, cap.packets  # the cleartext did arrive
            if filtered:
                assert r4.returncode != 0 and r6.returncode != 0, r4.stdout + r6.stdout
                assert _drops(a) >= 4
                # the tunnel still carries the same addresses, and IKE's port and ESP pass the filter
                assert b.ping(a.inner4, count=2, src=b.inner4).returncode == 0
                assert b.ping(a.inner6, count=2, src=b.inner6).returncode == 0
            else:
                assert r4.returncode == 0 and r6.returncode == 0, r4.stdout + r6.stdout
                assert a.run(["nft", "list", "tables"]).stdout.strip() == ""
        # closing the data plane removes its table
        assert a.run(["nft", "list", "tables"]).stdout.strip() == ""


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "esp"])
def test_transport_mode_host_to_host_v4(udp: bool) -> None:
    """Transport mode: ESP carries the ICMP/UDP/TCP payload without an IP header (the byte counters,
    which count what ESP protects, show 20 bytes less per packet than tunnel mode would), ping, a
    datagram larger than the MTU and a TCP transfer pass with intact checksums, and the wire shows
    only ESP."""
    with two_hosts() as (a, b):
        ats, bts = [f"{a.outer4}/32"], [f"{b.outer4}/32"]
        extra = ["--mode", "transport"]
        with tunnel(a, b, ats, bts, (a.outer4, b.outer4), udp=udp, extra=extra) as res:
            r = a.run(["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-s", "100", b.outer4], check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            # a datagram above the TUN MTU: fragmented by the kernel, put together again, one ESP packet
            assert _big_udp(a, b, b.outer4, 3000) == 3000
        # 3 echo requests of 8 + 100 bytes each way: ICMP only, no 20-byte IPv4 header
        assert res["a"]["bytes_out"] == res["b"]["bytes_in"] == 3 * 108 + 8 + 3000, res
        assert res["b"]["bytes_out"] == res["a"]["bytes_in"] == 3 * 108, res
        assert res["a"]["not_whole"] == 0, res
        with tunnel(a, b, ats, bts, (a.outer4, b.outer4), udp=udp, extra=extra) as res:
            bpf = "udp port 4500" if udp else "ip proto 50"
            with capture(b, "veth0", f"{bpf} or icmp or tcp") as cap:
                _tcp_transfer(a, b, b.outer4, a.outer4, 1_000_000)
            _only_esp(cap.packets, a.outer4, b.outer4, udp)
        assert res["b"]["bytes_in"] > 1_000_000 and res["b"]["dropped_in"] == 0, res


def _big_udp(a: Host, b: Host, dst: str, size: int) -> int:
    """One UDP datagram of `size` bytes from a to dst (in b): the size b received (0: nothing)."""
    fam = "socket.AF_INET6" if ":" in dst else "socket.AF_INET"
    srv = (
        f"import socket,sys;s=socket.socket({fam},socket.SOCK_DGRAM);s.bind((sys.argv[1],9999));"
        "s.settimeout(5);print('ready',flush=True)\n"
        "try: print(len(s.recv(70000)))\n"
        "except OSError: print(0)"
    )
    p = b.popen([sys.executable, "-c", srv, dst], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    a.run(
        [sys.executable, "-c", f"import socket,sys;socket.socket({fam},2).sendto(b'x'*{size},(sys.argv[1],9999))", dst]
    )
    out, _ = p.communicate(timeout=10)
    return int(out.strip() or 0)


def test_transport_mode_host_to_host_v6_udp() -> None:
    with two_hosts(v6=True) as (a, b):
        assert a.outer6 and b.outer6
        ats, bts = [f"{a.outer6}/128"], [f"{b.outer6}/128"]
        with tunnel(a, b, ats, bts, (a.outer6, b.outer6), extra=["--mode", "transport"]) as res:
            with capture(b, "veth0", "udp port 4500 or tcp or icmp6 and not ip6[40] >= 133") as cap:
                r = a.ping(b.outer6, count=3)
                assert r.returncode == 0, r.stdout + r.stderr
                assert _big_udp(a, b, b.outer6, 5000) == 5000
                _tcp_transfer(a, b, b.outer6, a.outer6, 300_000)
            _only_esp(cap.packets, a.outer6, b.outer6, True)
        assert res["b"]["dropped_in"] == 0 and res["b"]["bytes_in"] > 300_000, res


def test_time_lifetime_soft_once_then_hard_stops_traffic() -> None:
    """Time limits run on the plane's timers: soft (at 90%) is reported once although both SAs of the
    child reach it, hard once, and after hard the child carries nothing."""
    with two_hosts() as (a, b):
        with tunnel(a, b, [a.inner_net4], [b.inner_net4], (a.outer4, b.outer4), extra=["--lifetime-s", "3"]) as res:
            t0 = time.monotonic()
            assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0
            time.sleep(max(0.0, 3.5 - (time.monotonic() - t0)))
            assert a.ping(b.inner4, count=2, src=a.inner4, timeout=6).returncode != 0
        for side in ("a", "b"):
            assert res[side]["expiries"] == [[1, "soft"], [1, "hard"]], res
            assert res[side]["packets_out"] == 2, res  # nothing left after the hard limit


def _marked_connect(b: Host, src: str, dst: str, port: int) -> None:
    """A TCP SYN from b to dst:port past the tunnel (bypass mark); nobody needs to answer."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, 36, 0x494B45); s.settimeout(0.5)\n"
        "s.bind((sys.argv[1], 0))\n"
        "try: s.connect((sys.argv[2], int(sys.argv[3])))\n"
        "except OSError: pass\n"
    )
    b.run([sys.executable, "-c", code, src, dst, str(port)], check=False)


def test_port_restricted_selectors_filter_only_their_traffic() -> None:
    """A child for TCP to port 5201 only: cleartext TCP to 5201 from the remote net is dropped by the
    filter, cleartext TCP to another port and ICMP are not the child's business and pass it."""
    require_tools("nft")
    with two_hosts() as (a, b):
        b.run(["ip", "route", "replace", f"{a.inner4}/32", "via", a.outer4, "dev", "veth0"])
        with tunnel(
            a,
            b,
            [a.inner_net4],
            [b.inner_net4],
            (a.outer4, b.outer4),
            extra=["--proto", "6"],
            extra_a=["--local-port", "5201"],
            extra_b=["--remote-port", "5201"],
        ):
            _tcp_transfer(b, a, a.inner4, b.inner4, 100_000)  # a serves on 5201, through the tunnel
            before = _drops(a)
            _marked_connect(b, b.inner4, a.inner4, 5202)
            b.run(["ping", "-n", "-c", "1", "-W", "1", "-m", _MARK, "-I", b.inner4, a.inner4], check=False)
            assert _drops(a) == before
            _marked_connect(b, b.inner4, a.inner4, 5201)
            assert _drops(a) > before


@contextmanager
def _host_behind(gw: Host, addr: str, gw_addr: str) -> Iterator[Host]:
    """A third namespace on a veth behind `gw` (which forwards), removed afterwards."""
    c = Host(new_ns_name())
    subprocess.run(["ip", "netns", "add", c.name], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", "lan1", "netns", gw.name, "type", "veth", "peer", "name", "eth0", "netns", c.name],
            check=True,
        )
        gw.run(["ip", "addr", "add", f"{gw_addr}/24", "dev", "lan1"])
        gw.run(["ip", "link", "set", "lan1", "up"])
        gw.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        c.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
        c.run(["ip", "link", "set", "eth0", "up"])
        c.run(["ip", "link", "set", "lo", "up"])
        c.run(["ip", "route", "add", "default", "via", gw_addr])
        yield c
    finally:
        c.kill_all()
        subprocess.run(["ip", "netns", "del", c.name], check=False)


@pytest.mark.parametrize("filtered", [True, False], ids=["filter", "no-filter"])
def test_cleartext_bypass_to_a_host_behind_the_gateway_is_dropped(filtered: bool) -> None:
    """The forward hook: cleartext for a host behind gateway a, from b's inside net, is not forwarded
    while the same ping through the tunnel is."""
    require_tools("nft")
    behind, gw_addr, net = "198.19.3.2", "198.19.3.1", "198.19.3.0/24"
    with two_hosts() as (a, b), _host_behind(a, behind, gw_addr):
        extra = [] if filtered else ["--no-filter"]
        with tunnel(a, b, [a.inner_net4, net], [b.inner_net4], (a.outer4, b.outer4), extra=extra):
            assert b.ping(behind, count=2, src=b.inner4).returncode == 0  # through the tunnel
            r = _bypass_ping(b, behind, b.inner4, a.outer4)
            if filtered:
                assert r.returncode != 0, r.stdout
                assert _drops(a) >= 2
            else:
                assert r.returncode == 0, r.stdout


def test_filter_through_libnftables_and_the_nft_program_alike() -> None:
    """The same changes through libnftables (in-process) and through the nft program (the fallback)
    leave the same table; close removes it."""
    require_tools("nft")
    code = (
        "import subprocess,sys\n"
        "from ike.dataplane.nftfilter import InboundFilter\n"
        "from ike.policy import TrafficSelector as T\n"
        "f = InboundFilter('ike0', lib=sys.argv[1])\n"
        "assert f.start()\n"
        "assert (f._lib is not None) == (sys.argv[1] == 'libnftables.so.1')\n"
        "f.add(1, [T.subnet('198.19.1.0/24'), T.host('198.19.1.1', 6, 80)], [T.subnet('198.19.2.0/24')])\n"
        "f.add(2, [T.subnet('198.19.1.0/24')], [T.subnet('198.19.2.0/24')])\n"
        "f.add(3, [T.subnet('2001:db8:1::/64')], [T.subnet('2001:db8:2::/64')])\n"
        "f.remove(1); f.remove(3)\n"
        "print(subprocess.run(['nft', 'list', 'table', 'inet', 'ike'], capture_output=True, text=True).stdout)\n"
        "f.close()\n"
        "print('after:', subprocess.run(['nft', 'list', 'tables'], capture_output=True, text=True).stdout)\n"
    )
    with two_hosts() as (a, _b):
        lib = a.run([sys.executable, "-c", code, "libnftables.so.1"], env=_ENV).stdout
        prog = a.run([sys.executable, "-c", code, "no-such-libnftables.so"], env=_ENV).stdout
    assert lib == prog
    assert "198.19.2.0 . 198.19.1.0" in lib and "2001:db8" not in lib and "tcp" not in lib
    assert lib.rstrip().endswith("after:")


_ROUTES_SCRIPT = """
import asyncio, dataclasses, json, subprocess
from ike.dataplane.base import DataPlaneError
from ike.dataplane.manual import build_child, parser
from ike.policy import TrafficSelector as T

def child(cid, local, remote):
    a = ["--local", "198.18.0.1", "--remote", "198.18.0.2", "--local-ts", "198.19.1.0/24",
         "--remote-ts", "198.19.2.0/24", "--spi-in", "%x" % (0x1000 + cid), "--spi-out", "%x" % (0x2000 + cid),
         "--key-in", "00" * 20, "--key-out", "00" * 20, "--no-udp", "--child-id", str(cid)]
    c = build_child(parser().parse_args(a))
    return dataclasses.replace(c, local_ts=tuple(map(T.parse, local)), remote_ts=tuple(map(T.parse, remote)))

def routes():
    out = {}
    for fam in ("-4", "-6"):
        p = subprocess.run(["ip", "-j", fam, "route", "show", "table", "4501"], capture_output=True, text=True)
        out[fam] = sorted([r["dst"], r["dev"], r.get("prefsrc")] for r in json.loads(p.stdout or "[]"))
    return out

async def main():
    from ike.dataplane.userspace import UserspaceDataPlane
    dp = UserspaceDataPlane(inbound_filter=False)
    await dp.start()
    snap = {}
    try:
        dp.install(child(1, ["198.19.1.0/24", "2001:db8:1::/64"],
                         ["198.19.2.0/24", "198.19.5.0-198.19.6.255", "2001:db8:2::/64"]))
        snap["one"] = routes()
        snap["dumps_one"] = dp._addrs.dumps
        # an address added after the first dump must be seen: it is the next child's source hint
        subprocess.run(["ip", "addr", "add", "198.19.7.1/24", "dev", "lan0"], check=True)
        dp.install(child(2, ["198.19.7.0/24"], ["198.19.8.0/24", "198.19.2.0/24"]))
        snap["two"] = routes()
        dumps = dp._addrs.dumps
        dp.install(child(3, ["198.19.7.0/24"], ["198.19.8.0/24"]))  # every route taken already: no dump
        snap["dumps_unchanged"] = dp._addrs.dumps == dumps
        dp.remove(3)
        dp.remove(1)
        snap["after_one"] = routes()
        good, dp._ifindex = dp._ifindex, 999999  # a device the kernel does not have: it refuses the route
        try:
            dp.install(child(4, ["198.19.1.0/24"], ["198.19.8.0/24", "198.19.9.0/24"]))
            snap["refused"] = None
        except DataPlaneError as e:
            snap["refused"] = str(e)
        dp._ifindex = good
        snap["after_refused"] = routes()
        dp.remove(2)
        snap["none"] = routes()
    finally:
        await dp.close()
    print(json.dumps(snap))

asyncio.run(main())
"""


def test_routes_in_the_table_follow_install_and_remove() -> None:
    """`ip route show table 4501` lists exactly the routes of the installed children, with the source
    hint from the local selectors (an address added meanwhile included), shared routes stay until the
    last child using them goes, a route the kernel refuses fails the install with the kernel's reason
    and leaves nothing behind, and nothing is left after the last removal."""
    with two_hosts(v6=True) as (a, _b):
        out = a.run([sys.executable, "-c", _ROUTES_SCRIPT], env=_ENV).stdout
    snap = json.loads(out.splitlines()[-1])
    tun = "ike0"
    assert snap["one"] == {
        "-4": [
            ["198.19.2.0/24", tun, "198.19.1.1"],
            ["198.19.5.0/24", tun, "198.19.1.1"],
            ["198.19.6.0/24", tun, "198.19.1.1"],
        ],
        "-6": [["2001:db8:2::/64", tun, "2001:db8:1::1"]],
    }, snap
    assert snap["dumps_one"] == 1
    assert snap["two"]["-4"] == [
        ["198.19.2.0/24", tun, "198.19.1.1"],  # child 1's route, shared with child 2
        ["198.19.5.0/24", tun, "198.19.1.1"],
        ["198.19.6.0/24", tun, "198.19.1.1"],
        ["198.19.8.0/24", tun, "198.19.7.1"],
    ], snap
    assert snap["dumps_unchanged"] is True
    assert snap["after_one"] == {
        "-4": [["198.19.2.0/24", tun, "198.19.1.1"], ["198.19.8.0/24", tun, "198.19.7.1"]],
        "-6": [],
    }, snap
    assert snap["refused"] is not None
    assert snap["refused"].startswith("child SA 4: routing 198.19.9.0/24 into ike0, table 4501"), snap
    assert "No such device" in snap["refused"], snap
    assert snap["after_refused"] == snap["after_one"], snap
    assert snap["none"] == {"-4": [], "-6": []}, snap
