"""esp-throughput: iperf3 TCP through one tunnel between two namespaces, AES-GCM-128 ESP.

iked's userspace data plane (two iked, IKEv2, `ike cmd=activate ... wait`) against strongSwan's
kernel-libipsec (two charons), and plain veth between the same namespaces as the ceiling. Also
the manual data plane CLI with static SAs and ESP-in-UDP, which is what charon's kernel-libipsec
always sends, so the encapsulation difference shows. Rounds alternate iked and charon so that a
noisy machine hurts both alike; the median of the rounds counts.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    P1,
    P2,
    Profiler,
    cpu_seconds,
    engine_available,
    find_process,
    iked_xml,
    load_gw_net,
    log,
    median,
    not_measured,
    parser,
    prerequisites,
    result,
)

NAME = "esp-throughput"
PROFILE: Path | None = None  # --profile DIR: py-spy both iked while iperf3 runs


def iperf(client: object, server: object, dst: str, src: str, seconds: float) -> float:
    """Mbit/s received by `server` from one iperf3 TCP stream `src` -> `dst`."""
    from harness.netns import Host

    assert isinstance(client, Host) and isinstance(server, Host)
    srv = server.popen(["iperf3", "-s", "-1", "-B", dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        last = ""
        for _ in range(50):
            r = client.run(
                ["iperf3", "-c", dst, "-B", src, "-t", f"{seconds:g}", "-J", "--connect-timeout", "3000"],
                check=False,
                timeout=seconds + 30,
            )
            try:
                data = json.loads(r.stdout)
            except ValueError:
                data = {}
            if r.returncode == 0 and "sum_received" in data.get("end", {}):
                return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
            last = str(data.get("error", "")) + r.stdout[-300:] + r.stderr[-300:]
            if "refused" not in last and "busy" not in last:
                break
            time.sleep(0.1)  # server not listening yet
        raise RuntimeError(f"iperf3 {src} -> {dst} failed: {last}")
    finally:
        srv.kill()
        srv.wait(5)


def iked_round(a: object, b: object, seconds: float) -> tuple[float, tuple[float, ...]]:
    """(Mbit/s, CPU % of the sending and the receiving iked) through two iked with the userspace data plane."""
    from harness.iked import Iked
    from harness.netns import Host

    assert isinstance(a, Host) and isinstance(b, Host)
    with (
        Iked(a, dataplane="userspace", log_level="errors") as ia,
        Iked(b, dataplane="userspace", log_level="errors") as ib,
    ):
        ia.put(iked_xml([P1("gw", a.outer4, b.outer4)], [P2("net", "gw", a.inner_net4, b.inner_net4)]))
        ib.put(iked_xml([P1("gw", b.outer4, a.outer4)], [P2("net", "gw", b.inner_net4, a.inner_net4)]))
        ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
        assert ia.proc is not None and ib.proc is not None
        pids = [find_process(ia.proc.pid, "python"), find_process(ib.proc.pid, "python")]
        c0, t0 = [cpu_seconds(x) for x in pids], time.perf_counter()
        tx = PROFILE / "esp-iked-sender.txt" if PROFILE else None
        rx = PROFILE / "esp-iked-receiver.txt" if PROFILE else None
        with Profiler(pids[0], tx), Profiler(pids[1], rx):
            mbit = iperf(a, b, b.inner4, a.inner4, seconds)
        wall = time.perf_counter() - t0
        cpu = tuple(100 * (cpu_seconds(x) - c) / wall for x, c in zip(pids, c0, strict=True))
    return mbit, cpu


def manual_round(a: object, b: object, seconds: float) -> float:
    """Mbit/s through the manual data plane CLI (static SAs, ESP-in-UDP like kernel-libipsec)."""
    from harness.netns import Host

    assert isinstance(a, Host) and isinstance(b, Host)
    k_ab, k_ba = secrets.token_hex(20), secrets.token_hex(20)  # AES-128 key + 4-byte salt
    procs = []
    try:
        for h, lo, re_, lts, rts, si, so, kin, kout in (
            (a, a.outer4, b.outer4, a.inner_net4, b.inner_net4, "a001", "b001", k_ba, k_ab),
            (b, b.outer4, a.outer4, b.inner_net4, a.inner_net4, "b001", "a001", k_ab, k_ba),
        ):
            cmd = [sys.executable, "-m", "ike.dataplane.manual", "--local", lo, "--remote", re_]
            cmd += ["--local-ts", lts, "--remote-ts", rts, "--spi-in", si, "--spi-out", so]
            cmd += ["--encr", "aes-gcm-16", "--keylen", "128", "--key-in", kin, "--key-out", kout]
            p = h.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"manual data plane in {h.name}: {line} {p.stderr.read() if p.stderr else ''}")
        return iperf(a, b, b.inner4, a.inner4, seconds)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def charon_round(a: object, b: object, seconds: float) -> tuple[float, tuple[float, ...]]:
    from harness.netns import Host
    from harness.strongswan import Charon

    assert isinstance(a, Host) and isinstance(b, Host)
    with Charon(a) as ca, Charon(b) as cb:
        load_gw_net(ca, cb, a, b)
        ca.initiate("net", "gw")
        ca.wait_established("gw", "net")
        cb.wait_established("gw", "net")
        assert ca.proc is not None and cb.proc is not None
        pids = [find_process(ca.proc.pid, "charon"), find_process(cb.proc.pid, "charon")]
        c0, t0 = [cpu_seconds(x) for x in pids], time.perf_counter()
        mbit = iperf(a, b, b.inner4, a.inner4, seconds)
        wall = time.perf_counter() - t0
        cpu = tuple(100 * (cpu_seconds(x) - c) / wall for x, c in zip(pids, c0, strict=True))
    return mbit, cpu


def row(r: int, label: str, mbit: float, cpu: tuple[float, ...]) -> None:
    load = f"  (CPU {cpu[0]:.0f}% tx side, {cpu[1]:.0f}% rx side)" if cpu else ""
    log(f"  round {r + 1}: {label:24s} {mbit:9.1f} Mbit/s{load}")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=None, help="iperf3 time per run (default 10, tiny 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating iked/charon rounds (default 3, tiny 1)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy both iked during their iperf3 runs into DIR")
    a_ = p.parse_args()
    global PROFILE
    PROFILE = a_.profile
    if PROFILE:
        PROFILE.mkdir(parents=True, exist_ok=True)
    seconds = a_.seconds or (1.0 if a_.tiny else 10.0)
    rounds = a_.rounds or (1 if a_.tiny else 3)
    why = prerequisites("iperf3", "ip")
    if why:
        not_measured(NAME, why, a_.tiny)
    from harness.netns import two_hosts

    v2, why_v2 = engine_available(2)
    log(f"{NAME}: AES-GCM-128 ESP, iperf3 TCP {seconds:g} s x {rounds} round(s), median counts")
    iked_mbit: list[float] = []
    swan_mbit: list[float] = []
    manual_mbit: list[float] = []
    with two_hosts() as (a, b):
        log(f"  namespaces: {a.name} {b.name}")
        veth = iperf(a, b, b.outer4, a.outer4, seconds)
        log(f"  plain veth (ceiling)              {veth:9.1f} Mbit/s")
        for r in range(rounds):
            if v2:
                mbit, cpu = iked_round(a, b, seconds)
                iked_mbit.append(mbit)
                row(r, "iked userspace (ESP)", mbit, cpu)
            mbit = manual_round(a, b, seconds)
            manual_mbit.append(mbit)
            row(r, "manual CLI (ESP-in-UDP)", mbit, ())
            mbit, cpu = charon_round(a, b, seconds)
            swan_mbit.append(mbit)
            row(r, "charon kernel-libipsec", mbit, cpu)
    if not v2:
        log(f"  iked itself not measured ({why_v2}); the figure is the manual data plane's")
    ours = median(iked_mbit) if iked_mbit else median(manual_mbit)
    log(
        f"  medians: iked {ours:.1f}, manual {median(manual_mbit):.1f}, charon {median(swan_mbit):.1f}, "
        f"veth {veth:.1f} Mbit/s"
    )
    result(NAME, ours, median(swan_mbit), "Mbit/s", higher_is_better=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
