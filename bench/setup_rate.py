"""setup-rate: IKE negotiations (phase 1 + one child / quick mode SA) completed per second by a
responder in another namespace: iked (none data plane), then charon (kernel-libipsec, the only
kernel interface that works here), driven by the same load generator built on our initiator
engines (bench/loadgen.py). PSK; IKEv2 AES-GCM-128 with Curve25519, IKEv2 with MODP-2048, and
IKEv1 main mode + quick mode (AES-CBC-128/SHA-256, Curve25519).

The generators share the machine with the responder; their CPU use is printed so a saturated
generator shows (a generator near 100% means the responder was not the limit).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    P1,
    P2,
    PSK,
    REPO,
    Profiler,
    cpu_seconds,
    engine_available,
    find_process,
    iked_xml,
    log,
    not_measured,
    parser,
    prerequisites,
    result,
)

NAME = "setup-rate"


@dataclass(frozen=True)
class Variant:
    label: str
    version: int
    dh: int

    @property
    def charon_proposal(self) -> str:
        group = {31: "x25519", 14: "modp2048"}[self.dh]
        return f"aes128gcm16-prfsha256-{group}" if self.version == 2 else f"aes128-sha256-{group}"


VARIANTS = [Variant("v2-x25519", 2, 31), Variant("v2-modp2048", 2, 14), Variant("v1-x25519", 1, 31)]

# Each generator process has one identity and its engines send INITIAL_CONTACT, so a responder drops
# that identity's older SAs as each new one completes: iked always does, charon with its default
# `unique = no`, which is therefore kept.
# charon defaults that would cap one busy peer address rather than measure setup work: at most 5
# half-open SAs per address (block_threshold), COOKIE from 10 half-open (iked's default is 50).
CHARON_LOAD = """
  block_threshold = 100000
  cookie_threshold = 50
  init_limit_half_open = 0
  filelog { charon { default = 0  ike = 0  cfg = 0  knl = 0 } }
"""


MAX_CLIENTS = 240  # client addresses 198.18.0.10 to .249, beside the two hosts' own


def gen_addrs(i: int, inflight: int) -> list[str]:
    """Generator i's client addresses, one per negotiation it keeps in flight (see loadgen.py)."""
    return [f"198.18.0.{10 + i * inflight + j}" for j in range(inflight)]


def gen_net(i: int) -> str:
    return f"198.19.{10 + i}.0/24"


@dataclass
class Run:
    rate: float
    completed: int
    failed: int
    gen_cpu: list[float]  # % of one core, per generator
    responder_cpu: float
    reasons: list[str]
    resent: int = 0  # retransmissions by the generators: a run limited by loss, not CPU, shows here
    rcvbuf_drops: int = 0  # datagrams the responder's kernel dropped for a full socket buffer


PROFILE: Path | None = None  # --profile DIR: py-spy the responder (iked only) during each run


def drive(a: object, b: object, v: Variant, responder_pid: int, procs: int, inflight: int, seconds: float) -> Run:
    from harness.netns import Host

    assert isinstance(a, Host) and isinstance(b, Host)
    gens = []
    try:
        for i in range(procs):
            cmd = [sys.executable, str(REPO / "bench" / "loadgen.py"), "--local", ",".join(gen_addrs(i, inflight))]
            cmd += ["--remote", b.outer4]
            cmd += ["--version", str(v.version), "--dh", str(v.dh), "--psk", PSK]
            cmd += ["--local-net", gen_net(i), "--remote-net", b.inner_net4]
            cmd += ["--seconds", f"{seconds:g}", "--inflight", str(inflight)]
            g = a.popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={"PYTHONPATH": str(REPO / "src")},
            )
            gens.append(g)
            assert g.stdout is not None
            line = g.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"load generator {i} did not start: {line} {g.stderr.read() if g.stderr else ''}")
        drops0 = udp_rcvbuf_errors(b)
        c0, t0 = cpu_seconds(responder_pid), time.perf_counter()
        for g in gens:
            assert g.stdin is not None
            g.stdin.write("go\n")
            g.stdin.flush()
        reports = []
        for g in gens:
            out, err = g.communicate(timeout=seconds * 10 + 60)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if g.returncode != 0 or not lines:
                raise RuntimeError(f"load generator failed ({g.returncode}): {out[-500:]} {err[-2000:]}")
            reports.append(json.loads(lines[-1]))
        wall = time.perf_counter() - t0
        responder_cpu = 100 * (cpu_seconds(responder_pid) - c0) / wall
        drops = udp_rcvbuf_errors(b) - drops0
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
                g.wait(5)
    completed = sum(r["completed"] for r in reports)
    span = max(r["seconds"] for r in reports)
    reasons = [f"{n}x {why}" for r in reports for why, n in r["reasons"]]
    return Run(
        completed / span,
        completed,
        sum(r["failed"] for r in reports),
        [100 * r["cpu_seconds"] / r["seconds"] for r in reports],
        responder_cpu,
        reasons,
        sum(int(r.get("resent", 0)) for r in reports),
        drops,
    )


def udp_rcvbuf_errors(host: object) -> int:
    """The namespace's count of UDP datagrams dropped because a socket's receive buffer was full."""
    from harness.netns import Host

    assert isinstance(host, Host)
    lines = [ln.split() for ln in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("RcvbufErrors")])


def iked_run(a: object, b: object, v: Variant, procs: int, inflight: int, seconds: float) -> Run:
    from harness.iked import Iked
    from harness.netns import Host

    assert isinstance(a, Host) and isinstance(b, Host)
    clients = [(i, addr) for i in range(procs) for addr in gen_addrs(i, inflight)]
    p1s = [P1(f"g{k}", b.outer4, addr, v.version, v.dh) for k, (_i, addr) in enumerate(clients)]
    p2s = [P2(f"n{k}", f"g{k}", b.inner_net4, gen_net(i)) for k, (i, _addr) in enumerate(clients)]
    with Iked(b, dataplane="none", log_level="errors") as ib:
        ib.put(iked_xml(p1s, p2s))
        assert ib.proc is not None
        pid = find_process(ib.proc.pid, "python")
        with Profiler(pid, PROFILE / f"setup-rate-{v.label}-iked.txt" if PROFILE else None):
            run = drive(a, b, v, pid, procs, inflight, seconds)
        if not ib.alive():
            raise RuntimeError(f"iked died during the run:\n{ib.log(40)}")
    return run


def charon_run(a: object, b: object, v: Variant, procs: int, inflight: int, seconds: float) -> Run:
    from harness.netns import Host
    from harness.strongswan import Charon, Child, Conn

    assert isinstance(a, Host) and isinstance(b, Host)
    with Charon(b, extra_conf=CHARON_LOAD) as cb:
        cb.load(
            Conn(
                name="gen",
                version=v.version,
                local_addrs=[b.outer4],
                proposals=[v.charon_proposal],
                psk=PSK,
                children=[Child("net", [b.inner_net4], ["198.19.0.0/16"], ["aes128gcm16"])],
            )
        )
        assert cb.proc is not None
        return drive(a, b, v, find_process(cb.proc.pid, "charon"), procs, inflight, seconds)


def show(who: str, r: Run) -> None:
    gens = ", ".join(f"{c:.0f}%" for c in r.gen_cpu)
    log(
        f"    {who:7s} {r.rate:8.1f} setups/s  ({r.completed} done, {r.failed} failed; "
        f"responder CPU {r.responder_cpu:.0f}%, generator CPU {gens}; "
        f"{r.resent} resent, {r.rcvbuf_drops} dropped at the responder's socket)"
    )
    for why in r.reasons:
        log(f"            failure: {why}")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=None, help="per run (default 15, tiny 0.5)")
    p.add_argument("--procs", type=int, default=None, help="generator processes (default 2, tiny 1)")
    p.add_argument("--inflight", type=int, default=None, help="negotiations in flight per generator (default 32)")
    p.add_argument("--variant", action="append", choices=[v.label for v in VARIANTS], help="only these")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy iked during each run into DIR")
    a_ = p.parse_args()
    global PROFILE
    PROFILE = a_.profile
    if PROFILE:
        PROFILE.mkdir(parents=True, exist_ok=True)
    seconds = a_.seconds or (0.5 if a_.tiny else 15.0)
    procs = a_.procs or (1 if a_.tiny else 2)
    inflight = a_.inflight or (4 if a_.tiny else 32)
    if procs * inflight > MAX_CLIENTS:
        raise SystemExit(f"{NAME}: --procs x --inflight is at most {MAX_CLIENTS} (one client address each)")
    why = prerequisites("ip")
    if why:
        not_measured(NAME, why, a_.tiny)
    # tiny: one IKEv2 and one IKEv1 variant (MODP-2048 takes the same code path as Curve25519)
    default = [v for v in VARIANTS if v.dh == 31] if a_.tiny else VARIANTS
    variants = [v for v in default if not a_.variant or v.label in a_.variant]
    missing = []
    for version in sorted({v.version for v in variants}):
        ok, why = engine_available(version)
        if not ok:
            missing.append(why)
            variants = [v for v in variants if v.version != version]
    if not variants:
        not_measured(NAME, "; ".join(missing), a_.tiny)
    from harness.netns import two_hosts

    log(
        f"{NAME}: {procs} generator process(es) x {inflight} in flight, one client address and identity each, "
        f"{seconds:g} s per run, PSK, ESP AES-GCM-128"
    )
    results: list[tuple[Variant, Run, Run]] = []
    with two_hosts() as (a, b):
        log(f"  namespaces: {a.name} {b.name}")
        for i in range(procs):
            for addr in gen_addrs(i, inflight):
                a.run(["ip", "addr", "add", f"{addr}/24", "dev", a.outer_if])
        for v in variants:
            log(f"  {v.label} ({v.charon_proposal}):")
            ri = iked_run(a, b, v, procs, inflight, seconds)
            show("iked", ri)
            rs = charon_run(a, b, v, procs, inflight, seconds)
            show("charon", rs)
            results.append((v, ri, rs))
    for m in missing:
        log(f"  not measured: {m}")
    # The headline (last line) is IKEv2 with Curve25519 when it ran; each variant has its own line.
    results.sort(key=lambda t: t[0].label == "v2-x25519")
    incomplete = False
    for v, ri, rs in results:
        name = NAME if v.label == "v2-x25519" else f"{NAME}/{v.label}"
        if ri.completed == 0 or rs.completed == 0:
            log(f"NOT MEASURED {name}: a responder completed nothing (iked {ri.completed}, charon {rs.completed})")
            incomplete = True
            continue
        result(name, ri.rate, rs.rate, "/s", higher_is_better=True)
    return 3 if (missing or incomplete) and not a_.tiny else 0


if __name__ == "__main__":
    sys.exit(main())
