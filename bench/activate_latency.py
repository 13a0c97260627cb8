"""activate-latency: from the command to an established tunnel (IKEv2, PSK, AES-GCM-128,
Curve25519, one child SA), as a user sees it: `ike cmd=activate phase=2 numlist=1 wait` between two
iked (userspace data plane) against `swanctl --initiate --child net` between two charons
(kernel-libipsec). Both commands run through `ip netns exec` and include their own start-up; the
tunnel is removed between tries, and the two stacks take turns (each in its own pair of
namespaces, both up for the whole run). `ike cmd=list` (the command's start-up and one control request)
is printed as the floor our CLI adds.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    P1,
    P2,
    Profiler,
    compile_bytecode,
    engine_available,
    find_process,
    iked_xml,
    interpreter,
    load_gw_net,
    log,
    median,
    not_measured,
    parser,
    prerequisites,
    result,
)

if TYPE_CHECKING:
    from collections.abc import Callable

NAME = "activate-latency"
PROFILE: Path | None = None  # --profile DIR: py-spy both iked during the tries


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def _wait(cond: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def iked_stack(stack: contextlib.ExitStack, a: Any, b: Any) -> tuple[Callable[[], float], float]:
    """Two iked (userspace data plane) with one tunnel defined; returns one try (activate ... wait,
    then remove it on both sides) and the CLI floor (`ike cmd=list`)."""
    from harness.iked import Iked

    def tunnels(d: Iked) -> list[object]:
        out = json.loads(d.ike("cmd=list", "format=json").stdout)
        return [t for t in out["tunnels"] if t.get("state") == "established"]

    ia = stack.enter_context(Iked(a, dataplane="userspace", log_level="errors"))
    ib = stack.enter_context(Iked(b, dataplane="userspace", log_level="errors"))
    ia.put(iked_xml([P1("gw", a.outer4, b.outer4)], [P2("net", "gw", a.inner_net4, b.inner_net4)]))
    ib.put(iked_xml([P1("gw", b.outer4, a.outer4)], [P2("net", "gw", b.inner_net4, a.inner_net4)]))
    ike = ike_command()
    floor = median([_timed(lambda: a.run([ike, "cmd=list"], env=ia.env)) for _ in range(5)])
    assert ia.proc is not None and ib.proc is not None
    pi, pr = find_process(ia.proc.pid, "python"), find_process(ib.proc.pid, "python")
    stack.enter_context(Profiler(pi, PROFILE / "activate-iked-initiator.txt" if PROFILE else None))
    stack.enter_context(Profiler(pr, PROFILE / "activate-iked-responder.txt" if PROFILE else None))

    def one() -> float:
        t = _timed(lambda: a.run([ike, "cmd=activate", "phase=2", "numlist=1", "wait"], env=ia.env))
        if not tunnels(ia):
            raise RuntimeError(f"activate returned but nothing is established:\n{ia.log(40)}")
        ia.ike("cmd=remove", "all")
        _wait(lambda: not tunnels(ia) and not tunnels(ib), "iked to remove the tunnel on both sides")
        return t

    return one, floor


def ike_command() -> str:
    """The `ike` a user runs (the installed script beside this interpreter), not the harness's
    `python -c` stand-in: its start-up is part of the figure."""
    import shutil

    beside = Path(sys.executable).parent / "ike"
    found = str(beside) if beside.exists() else shutil.which("ike")
    if found is None:
        raise SystemExit("activate-latency: no installed `ike` command (pip install -e .)")
    return found


def charon_stack(stack: contextlib.ExitStack, a: Any, b: Any) -> tuple[Callable[[], float], float]:
    """Two charons (kernel-libipsec) with the same tunnel loaded; returns one try (swanctl
    --initiate, which blocks until the CHILD_SA is up or fails, then terminate it on both sides)
    and swanctl's own floor (`swanctl --list-sas`)."""
    from harness.strongswan import Charon

    ca = stack.enter_context(Charon(a))
    cb = stack.enter_context(Charon(b))
    load_gw_net(ca, cb, a, b)
    floor = median([_timed(lambda: ca.swanctl("--list-sas")) for _ in range(5)])

    def one() -> float:
        t = _timed(lambda: ca.swanctl("--initiate", "--child", "net", "--ike", "gw"))
        ca.wait_established("gw", "net", timeout=5)
        ca.swanctl("--terminate", "--ike", "gw")
        _wait(lambda: not ca.list_sas() and not cb.list_sas(), "charon to remove the SAs on both sides")
        return t

    return one, floor


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--tries", type=int, default=None, help="per daemon (default 20, tiny 1)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy both iked during the tries into DIR")
    a_ = p.parse_args()
    global PROFILE
    PROFILE = a_.profile
    if PROFILE:
        PROFILE.mkdir(parents=True, exist_ok=True)
    tries = a_.tries or (1 if a_.tiny else 20)
    why = prerequisites("ip")
    if why:
        not_measured(NAME, why, a_.tiny)
    ok, why = engine_available(2)
    if not ok:
        not_measured(NAME, why, a_.tiny)
    from harness.netns import two_hosts

    compile_bytecode()
    log(f"{NAME}: IKEv2 PSK AES-GCM-128 x25519, one child SA, {tries} tries each, median counts")
    log("  the two stacks run side by side in their own namespaces and take turns, so that the")
    log("  machine's slow and fast moments fall on both alike")
    log(f"  {interpreter()}")
    ours: list[float] = []
    theirs: list[float] = []
    with contextlib.ExitStack() as stack:
        a, b = stack.enter_context(two_hosts())
        c, d = stack.enter_context(two_hosts())
        log(f"  namespaces: iked {a.name} {b.name}, charon {c.name} {d.name}")
        iked_one, floor = iked_stack(stack, a, b)
        charon_one, swan_floor = charon_stack(stack, c, d)
        for i in range(tries):
            # Alternate who goes first: a try right after the other's teardown may find the CPU busier.
            if i % 2 == 0:
                ours.append(iked_one())
                theirs.append(charon_one())
            else:
                theirs.append(charon_one())
                ours.append(iked_one())
    ms = [f"{1000 * t:.0f}" for t in ours]
    log(f"  ike cmd=activate ... wait   {1000 * median(ours):7.1f} ms median  (tries: {' '.join(ms)} ms)")
    log(f"    of which CLI start-up and one control request (ike cmd=list): {1000 * floor:.1f} ms")
    ms = [f"{1000 * t:.0f}" for t in theirs]
    log(f"  swanctl --initiate          {1000 * median(theirs):7.1f} ms median  (tries: {' '.join(ms)} ms)")
    log(f"    of which swanctl start-up and one vici request (swanctl --list-sas): {1000 * swan_floor:.1f} ms")
    # Each try's neighbour on the other stack ran a moment apart, under the same load: their ratio
    # is steadier than the ratio of the two medians, which a slow patch on one side can move.
    pairs = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    log(
        f"  per pair of neighbouring tries, swanctl/ike: median {median(pairs):.2f}, "
        f"quartiles {pairs[len(pairs) // 4]:.2f}..{pairs[(3 * len(pairs)) // 4]:.2f}"
    )
    result(NAME, 1000 * median(ours), 1000 * median(theirs), "ms", higher_is_better=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
