"""Two test hosts in network namespaces, joined by a veth pair, and a packet capture helper.

Layout made by `two_hosts()` (a = first host, b = second):

    a: lo up; veth0 198.18.0.1/24 [2001:db8:0:1::1/64]; lan0 198.19.1.1/24 [2001:db8:1::1/64]
    b: lo up; veth0 198.18.0.2/24 [2001:db8:0:1::2/64]; lan0 198.19.2.1/24 [2001:db8:2::1/64]

veth0 is the "outside" (IKE and ESP travel there). lan0 is a sink interface (dummy, or ifb where the
kernel has no dummy driver) that holds the "inside" address standing for the network behind each
gateway. There is deliberately no route between the inside networks: only a tunnel can join them, so a
ping between inside addresses proves the tunnel carries it.

Addresses are only ever from 198.18.0.0/15 and 2001:db8::/32, only inside namespaces made here, and
the namespaces (and every process started in them) are removed on exit, also when the test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NS_PREFIX = "iketest-"


class CommandError(subprocess.CalledProcessError):
    """A failed command whose message carries its output, so a test failure shows why."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        return f"{super().__str__()}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = None if env is None else {**os.environ, **env}
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env=full_env, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


@dataclass
class Host:
    """One test host: a network namespace. Address attributes are filled in by `two_hosts()`."""

    name: str
    outer_if: str = "veth0"
    inner_if: str = "lan0"
    outer4: str = ""
    inner4: str = ""
    inner_net4: str = ""
    outer6: str | None = None
    inner6: str | None = None
    inner_net6: str | None = None
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(
        self,
        cmd: list[str],
        check: bool = True,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace; text output is captured. `env` adds to the current environment.
        With check=True a non-zero exit raises CommandError showing stdout and stderr."""
        return _run(self.exec_prefix() + cmd, check=check, timeout=timeout, env=env, input=input)

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside the namespace in its own session (so its whole process group can be
        killed). `env` in kw adds to the current environment. The process is killed on cleanup."""
        env = kw.pop("env", None)
        if env is not None:
            kw["env"] = {**os.environ, **env}
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_prefix() + cmd, **kw)
        self._procs.append(proc)
        return proc

    def ping(
        self, dst: str, count: int = 3, src: str | None = None, timeout: float = 10, interval: float = 0.2
    ) -> subprocess.CompletedProcess[str]:
        """ping (never raises on loss: check `.returncode == 0`). `src` picks the source address."""
        cmd = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1"]
        if src is not None:
            cmd += ["-I", src]
        return self.run([*cmd, dst], check=False, timeout=timeout)

    def pids(self) -> list[int]:
        out = _run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def kill_all(self, grace: float = 3.0) -> None:
        """Stop what popen() started (SIGTERM, then SIGKILL after `grace`), then SIGKILL anything else
        still living in the namespace so that it can really go away."""
        live = [p for p in self._procs if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(2)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._procs.clear()


def new_ns_name() -> str:
    # The creating process's pid is in the name so that a later run can tell a namespace whose creator
    # was killed (SIGKILL leaves no chance to clean up) from one that another live run is using.
    return f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"


_STALE = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-[0-9a-f]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> list[str]:
    """Delete namespaces (and kill what runs in them) left by test processes that no longer exist,
    with their charon/iked working directories. Namespaces of live processes are never touched."""
    reaped = []
    for name in sorted(existing_namespaces()):
        m = _STALE.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        Host(name).kill_all(grace=0)
        _delete_ns(name)
        for leftover in Path(tempfile.gettempdir()).glob(f"{name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        reaped.append(name)
    return reaped


def existing_namespaces() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _add_sink(ns: str, ifname: str) -> None:
    # Some test kernels lack the dummy driver; ifb behaves the same for holding local addresses.
    if _run(["ip", "-n", ns, "link", "add", ifname, "type", "dummy"], check=False).returncode != 0:
        _run(["ip", "-n", ns, "link", "add", ifname, "type", "ifb"])


def _delete_ns(name: str) -> None:
    _run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def two_hosts(v6: bool = False) -> Iterator[tuple[Host, Host]]:
    """Two namespaces joined by veth0, each with lan0 holding its inside addresses (see module doc)."""
    reap_stale()
    a = Host(new_ns_name(), outer4="198.18.0.1", inner4="198.19.1.1", inner_net4="198.19.1.0/24")
    b = Host(new_ns_name(), outer4="198.18.0.2", inner4="198.19.2.1", inner_net4="198.19.2.0/24")
    if v6:
        a.outer6, a.inner6, a.inner_net6 = "2001:db8:0:1::1", "2001:db8:1::1", "2001:db8:1::/64"
        b.outer6, b.inner6, b.inner_net6 = "2001:db8:0:1::2", "2001:db8:2::1", "2001:db8:2::/64"
    created: list[Host] = []
    try:
        for h in (a, b):
            _run(["ip", "netns", "add", h.name])
            created.append(h)
        _run(
            [
                "ip",
                "link",
                "add",
                a.outer_if,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                b.outer_if,
                "netns",
                b.name,
            ]
        )
        for h in (a, b):
            ns = ["ip", "-n", h.name]
            _run([*ns, "link", "set", "lo", "up"])
            _add_sink(h.name, h.inner_if)
            if v6:
                # No duplicate address detection: addresses must work the moment the test starts.
                for conf in ("all", "default", h.outer_if, h.inner_if):
                    h.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{conf}.accept_dad=0"], check=False)
            _run([*ns, "addr", "add", f"{h.outer4}/24", "dev", h.outer_if])
            _run([*ns, "addr", "add", f"{h.inner4}/24", "dev", h.inner_if])
            if v6:
                _run([*ns, "-6", "addr", "add", f"{h.outer6}/64", "dev", h.outer_if, "nodad"])
                _run([*ns, "-6", "addr", "add", f"{h.inner6}/64", "dev", h.inner_if, "nodad"])
            _run([*ns, "link", "set", h.outer_if, "up"])
            _run([*ns, "link", "set", h.inner_if, "up"])
        yield a, b
    finally:
        for h in created:
            h.kill_all()
        for h in created:
            _delete_ns(h.name)


# ----------------------------------------------------------------------------------------------------------
# Packet capture


@dataclass(frozen=True)
class Packet:
    """One captured IP packet, summarised. `kind` is one of: "esp" (IP protocol 50), "esp-in-udp"
    (UDP 4500 with a non-zero SPI), "ike" (UDP 500, or UDP 4500 behind the zero non-ESP marker),
    "natt-keepalive", "udp", "tcp", "icmp", "icmp6", "other"."""

    time: float
    version: int
    src: str
    dst: str
    proto: int
    length: int
    kind: str
    sport: int | None = None
    dport: int | None = None
    spi: int | None = None


_LINKTYPE_ETHERNET, _LINKTYPE_RAW, _LINKTYPE_SLL, _LINKTYPE_IPV4, _LINKTYPE_IPV6, _LINKTYPE_SLL2 = (
    1,
    101,
    113,
    228,
    229,
    276,
)
_IPV6_EXT_HEADERS = {0, 43, 60}  # hop-by-hop, routing, destination options: skipped to find the payload


def _classify(version: int, proto: int, l4: bytes) -> tuple[str, int | None, int | None, int | None]:
    if proto == 50:
        return "esp", None, None, int.from_bytes(l4[:4], "big") if len(l4) >= 4 else None
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        if proto == 6:
            return "tcp", sport, dport, None
        payload = l4[8:]
        if 4500 in (sport, dport):
            if payload == b"\xff":
                return "natt-keepalive", sport, dport, None
            if len(payload) >= 4 and payload[:4] == b"\0\0\0\0":
                return "ike", sport, dport, None
            if len(payload) >= 4:
                return "esp-in-udp", sport, dport, int.from_bytes(payload[:4], "big")
        if 500 in (sport, dport):
            return "ike", sport, dport, None
        return "udp", sport, dport, None
    if proto == 1:
        return "icmp", None, None, None
    if proto == 58:
        return "icmp6", None, None, None
    return "other", None, None, None


def parse_ip(ts: float, data: bytes) -> Packet | None:
    """Summarise one raw IPv4/IPv6 packet; None for anything that is not IP."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack("!H", data[2:4])[0]
        proto = data[9]
        src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(socket.AF_INET, data[16:20])
        frag_off = struct.unpack("!H", data[6:8])[0] & 0x1FFF
        l4 = data[ihl:] if frag_off == 0 else b""
        kind, sport, dport, spi = _classify(4, proto, l4) if l4 or proto == 50 else ("other", None, None, None)
        return Packet(ts, 4, src, dst, proto, total, kind, sport, dport, spi)
    if version == 6 and len(data) >= 40:
        total = 40 + struct.unpack("!H", data[4:6])[0]
        nxt = data[6]
        src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40])
        off = 40
        while nxt in _IPV6_EXT_HEADERS and len(data) >= off + 2:
            nxt, off = data[off], off + (data[off + 1] + 1) * 8
        if nxt == 44:  # fragment: only the first fragment carries the upper-layer header
            if len(data) < off + 8:
                return Packet(ts, 6, src, dst, nxt, total, "other")
            first = struct.unpack("!H", data[off + 2 : off + 4])[0] >> 3 == 0
            nxt, off = data[off], off + 8
            if not first:
                return Packet(ts, 6, src, dst, nxt, total, "other")
        kind, sport, dport, spi = _classify(6, nxt, data[off:])
        return Packet(ts, 6, src, dst, nxt, total, kind, sport, dport, spi)
    return None


def parse_pcap(raw: bytes) -> list[Packet]:
    """Read a classic pcap file (as tcpdump -w writes it) into Packet summaries (non-IP frames dropped)."""
    if len(raw) < 24:
        return []
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"not a pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", raw[20:24])[0] & 0x0FFFFFFF
    out: list[Packet] = []
    off = 24
    while off + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", raw[off : off + 16])
        frame = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        ip = _strip_link(linktype, frame)
        if ip is not None and (pkt := parse_ip(ts, ip)) is not None:
            out.append(pkt)
    return out


def _strip_link(linktype: int, frame: bytes) -> bytes | None:
    if linktype in (_LINKTYPE_RAW, _LINKTYPE_IPV4, _LINKTYPE_IPV6):
        return frame
    if linktype == _LINKTYPE_ETHERNET:
        off, ethertype = 14, struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:  # VLAN tags
            ethertype, off = struct.unpack("!H", frame[off + 2 : off + 4])[0], off + 4
    elif linktype == _LINKTYPE_SLL:
        off, ethertype = 16, struct.unpack("!H", frame[14:16])[0] if len(frame) >= 16 else 0
    elif linktype == _LINKTYPE_SLL2:
        off, ethertype = 20, struct.unpack("!H", frame[0:2])[0] if len(frame) >= 20 else 0
    else:
        return None
    return frame[off:] if ethertype in (0x0800, 0x86DD) else None


class Capture:
    """A running tcpdump inside a host; `packets` is filled when the capture stops."""

    def __init__(self, host: Host, iface: str, bpf: str, pcap: Path) -> None:
        self.host, self.iface, self.bpf, self.pcap = host, iface, bpf, pcap
        self.packets: list[Packet] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []

    def start(self, timeout: float = 10) -> None:
        cmd = [
            "tcpdump",
            "-i",
            self.iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "256",
            "-w",
            str(self.pcap),
        ]
        if self.bpf:
            cmd += self.bpf.split()
        self._proc = self.host.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = threading.Event()

        def drain() -> None:  # keep reading so tcpdump never blocks on a full stderr pipe
            assert self._proc is not None and self._proc.stderr is not None
            for line in iter(self._proc.stderr.readline, b""):
                text = line.decode(errors="replace").rstrip()
                self._stderr.append(text)
                if "listening on" in text:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            err = "\n".join(self._stderr)
            self.stop()
            raise RuntimeError(f"tcpdump did not start on {self.host.name}/{self.iface}: {err}")

    def stop(self) -> list[Packet]:
        if self._proc is not None and self._proc.poll() is None:
            time.sleep(0.2)  # let the last packets of the test reach the capture
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        if self.pcap.exists():
            self.packets = parse_pcap(self.pcap.read_bytes())
        return self.packets

    def kinds(self) -> set[str]:
        return {p.kind for p in self.packets}

    def between(self, a: str, b: str) -> list[Packet]:
        """Packets either way between addresses `a` and `b`."""
        pair = {str(ipaddress.ip_address(a)), str(ipaddress.ip_address(b))}
        return [p for p in self.packets if {p.src, p.dst} == pair]


@contextlib.contextmanager
def capture(host: Host, iface: str = "veth0", filter: str = "", timeout: float = 10) -> Iterator[Capture]:
    """Capture on `iface` in `host` with BPF `filter` while the block runs; read `cap.packets` after it:

    with capture(a, "veth0", "not arp") as cap:
        a.ping(b.outer4)
    assert cap.kinds() == {"icmp"}
    """
    with tempfile.TemporaryDirectory(prefix="iketest-cap-") as tmp:
        cap = Capture(host, iface, filter, Path(tmp) / "cap.pcap")
        cap.start(timeout)
        try:
            yield cap
        finally:
            cap.stop()
