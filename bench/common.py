"""Shared pieces of the benchmarks: the RESULT line, iked definitions as XML, process figures.

Every benchmark is a script (`python bench/<name>.py [--tiny]`) that prints its figures and, last,

    RESULT <name> ratio=<x.xx> iked=<figure><unit> strongswan=<figure><unit>

where ratio > 1 means iked did better (more per second, or less time / memory). A benchmark whose
counterpart cannot run yet prints `NOT MEASURED <name>: <why>` instead and exits 3 in full mode
(0 with --tiny, so the smoke tests only ever include what really runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.netns import Host
    from harness.strongswan import Charon

REPO = Path(__file__).resolve().parent.parent
# The namespace harness (two hosts, charon, iked) lives with the tests; the benchmarks reuse it.
for p in (REPO / "tests", REPO / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

EXIT_NOT_MEASURED = 3
PSK = "benchmark pre-shared key 0123456789"


def parser(doc: str | None) -> argparse.ArgumentParser:
    import signal

    # SIGTERM (a killed `make bench`) unwinds like Ctrl-C, so namespaces and daemons are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smallest run that exercises every path (for make test)")
    return p


def log(msg: str) -> None:
    print(msg, flush=True)


def result(name: str, iked: float, swan: float, unit: str, higher_is_better: bool, digits: int = 1) -> float:
    """Print the RESULT line; ratio > 1 means iked is better."""
    if iked <= 0 or swan <= 0:
        raise SystemExit(f"{name}: a figure is not positive (iked={iked}, strongswan={swan}); nothing to compare")
    ratio = iked / swan if higher_is_better else swan / iked
    log(f"RESULT {name} ratio={ratio:.2f} iked={_figure(iked, digits)}{unit} strongswan={_figure(swan, digits)}{unit}")
    return ratio


def _figure(x: float, digits: int) -> str:
    """`digits` decimals, more where needed for three significant digits: a tiny run's 0.07 s against
    0.03 s would otherwise print a ratio that the printed figures do not give."""
    import math

    return f"{x:.{max(digits, 2 - math.floor(math.log10(x)))}f}"


def not_measured(name: str, why: str, tiny: bool) -> None:
    log(f"NOT MEASURED {name}: {why}")
    raise SystemExit(0 if tiny else EXIT_NOT_MEASURED)


def engine_available(version: int) -> tuple[bool, str]:
    import importlib

    try:
        mod = importlib.import_module(f"ike.proto.v{version}")
    except ImportError as e:
        return False, f"ike.proto.v{version} cannot be imported ({e})"
    if not hasattr(mod, f"Ikev{version}Engine"):
        return False, f"ike.proto.v{version} has no Ikev{version}Engine yet"
    return True, ""


def compile_bytecode() -> None:
    """Compile the `ike` package as a wheel install would have. `make install` does it once, but
    a source edited since is compiled again by every command that imports it, and where
    PYTHONDONTWRITEBYTECODE is set (this machine, CI) never saved: several ms of each `ike` run
    that a user of an installed ike does not pay."""
    import compileall

    import ike

    compileall.compile_dir(str(Path(ike.__file__).parent), quiet=1)


def interpreter() -> str:
    """Which Python runs iked and ike: its build decides much of each command's start-up time."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return f"Python {sys.version.split()[0]} from {base}"


def prerequisites(*tools: str) -> str | None:
    """Why the namespace benchmarks cannot run here, or None."""
    import shutil

    from harness.strongswan import available

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"missing programs: {', '.join(missing)} (run `make install`)"
    ok, why = available()
    return None if ok else why


# --- process figures ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def find_process(root: int, comm: str) -> int:
    """`root` or its first descendant whose command name starts with `comm` (wrappers like
    `ip netns exec` and `unshare` usually exec, but do not rely on it)."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm):
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            continue
    raise RuntimeError(f"no process {comm!r} under pid {root}")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# --- iked definitions as XML ---------------------------------------------------------------------------


@dataclass(frozen=True)
class P1:
    name: str
    local_ip: str
    remote_ip: str
    version: int = 2
    dh: int = 31
    remote_addr: str | None = None  # IKE_RemoteAddress when it differs from the identity (e.g. any)


@dataclass(frozen=True)
class P2:
    name: str
    p1: str
    local_net: str  # a.b.c.d/len or a host address
    remote_net: str
    port: int = 0  # > 0: TCP to/from this port only (many tunnels between the same two subnets)


def _ident(tag: str, ts: str, port: int = 0) -> str:
    extra = f' Protocol="tcp" Port="{port}"' if port else ""
    if "/" in ts:
        net, plen = ts.split("/")
        return f'<{tag}><IPV4_Subnet Value="{net}" NetMask="{plen}"{extra}/></{tag}>'
    return f'<{tag}><IPV4_Address Value="{ts}"{extra}/></{tag}>'


def load_gw_net(ca: Charon, cb: Charon, a: Host, b: Host) -> None:
    """Load charon `ca` (in host `a`) and `cb` (in `b`) with the one tunnel the iked side defines
    with P1("gw") and P2("net"): PSK, AES-GCM-128, PRF-SHA-256, Curve25519, between the two hosts'
    inside networks."""
    from harness.strongswan import Child, Conn

    for c, me, peer in ((ca, a, b), (cb, b, a)):
        c.load(
            Conn(
                name="gw",
                local_addrs=[me.outer4],
                remote_addrs=[peer.outer4],
                proposals=["aes128gcm16-prfsha256-x25519"],
                psk=PSK,
                children=[Child("net", [me.inner_net4], [peer.inner_net4], ["aes128gcm16"])],
            )
        )


def iked_xml(p1s: Iterable[P1], p2s: Iterable[P2], psk: str = PSK, esp_keylen: int = 128) -> str:
    """One file with everything the benchmarks need: IKEv2 AES-GCM (IKEv1 AES-CBC/SHA-256, since
    IKEv1 phase 1 has no AEAD), PRF SHA-256, the tunnel's DH group; ESP AES-GCM-128; DPD off so a
    generator that forgets its SAs does not cost the responder work during the run."""
    p1s = list(p1s)
    out = ['<?xml version="1.0" encoding="UTF-8"?>', '<AIX_VPN Version="2.0">']
    for v, dh in sorted({(p.version, p.dh) for p in p1s}):
        if v == 2:
            t = f'IKE_Encryption="aes-gcm-16" IKE_KeyLength="128" IKE_PRF="hmac-sha2-256" IKE_DHGroup="{dh}"'
        else:
            t = (
                'IKE_Encryption="aes-cbc" IKE_KeyLength="128" IKE_Integrity="hmac-sha2-256-128" '
                f'IKE_PRF="hmac-sha2-256" IKE_DHGroup="{dh}"'
            )
        out.append(
            f'<IKEProtection IKE_ProtectionName="p1v{v}g{dh}" IKE_Version="{v}" IKE_XCHGMode="Main" '
            f'IKE_AuthenticationMethod="Preshared_key" IKE_DPDDelaySeconds="0"><IKETransform {t}/></IKEProtection>'
        )
    out.append(
        '<IPSecProtection IPSec_ProtectionName="p2" IPSec_EncapsulationMode="Tunnel" IPSec_PFSGroup="none">'
        f'<IPSecESPProtocol ESP_Encryption="aes-gcm-16" ESP_KeyLength="{esp_keylen}"/></IPSecProtection>'
    )
    peers: set[str] = set()
    for p in p1s:
        addr = f' IKE_RemoteAddress="{p.remote_addr}"' if p.remote_addr else ""
        out.append(
            f'<IKETunnel IKE_TunnelName="{p.name}" IKE_ProtectionRef="p1v{p.version}g{p.dh}"{addr}>'
            f'<IKELocalIdentity><IPV4_Address Value="{p.local_ip}"/></IKELocalIdentity>'
            f'<IKERemoteIdentity><IPV4_Address Value="{p.remote_ip}"/></IKERemoteIdentity></IKETunnel>'
        )
        peers.add(p.remote_ip)
    for q in p2s:
        out.append(
            f'<IPSecTunnel IPSec_TunnelName="{q.name}" IKE_TunnelName="{q.p1}" IPSec_ProtectionRef="p2">'
            + _ident("IPSecLocalIdentity", q.local_net, q.port)
            + _ident("IPSecRemoteIdentity", q.remote_net, q.port)
            + "</IPSecTunnel>"
        )
    for peer in sorted(peers):
        out.append(
            f'<IKEPresharedKey Value="{psk}"><PK_Identity><IPV4_Address Value="{peer}"/></PK_Identity>'
            "</IKEPresharedKey>"
        )
    out.append("</AIX_VPN>")
    return "\n".join(out) + "\n"


def run(cmd: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, **kw)  # type: ignore[call-overload, no-any-return]


class Profiler:
    """py-spy sampling `pid` while a block runs, written as collapsed stacks (`--format raw`) that
    `python bench/stacks.py FILE` summarises. Does nothing when `out` is None."""

    def __init__(self, pid: int, out: Path | None, idle: bool = True) -> None:
        self.pid, self.out, self.idle = pid, out, idle
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        import shutil

        if self.out is not None:
            spy = shutil.which("py-spy")
            if spy is None:
                raise SystemExit("--profile needs py-spy (pip install py-spy)")
            cmd = [spy, "record", "-p", str(self.pid), "-o", str(self.out), "-f", "raw", "-r", "200"]
            if self.idle:
                cmd.append("--idle")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # py-spy attaches
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            log(f"  profile of pid {self.pid}: {self.out}")
