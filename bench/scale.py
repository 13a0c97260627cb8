"""scale: many phase 2 tunnels (child SAs) under one IKEv2 phase 1 between two namespaces.

- definitions: `ikedb put` of N+1 phase 2 tunnels against `swanctl --load-all` of the same
  children;
- for each count: time to establish all of them (after one warm-up tunnel) (`ike cmd=activate phase=2 numlist=1-N wait`
  between two iked with the none data plane, against vici `initiate` of every child between two
  charons), the initiating daemon's memory per established tunnel (growth of its RSS divided by
  N), `ike cmd=list` and `ike cmd=list db` against `swanctl --list-sas` and `swanctl --list-conns`,
  and one more tunnel's activate latency while N are up.

The tunnels all join 198.19.1.0/24 and 198.19.2.0/24, each for its own TCP port, so that the
selectors differ while charon's kernel-libipsec still finds a local address for its route.
charon's figures include kernel-libipsec's userspace SAs (it has no "none" data plane).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    P1,
    P2,
    PSK,
    Profiler,
    compile_bytecode,
    engine_available,
    find_process,
    iked_xml,
    interpreter,
    log,
    not_measured,
    parser,
    prerequisites,
    result,
    rss_kib,
)

NAME = "scale"
PROFILE: Path | None = None  # --profile DIR: py-spy the initiating iked while it establishes and lists
BASE_PORT = 1000


def _t(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Figures(dict[str, float]):
    pass


def iked_side(a: Any, b: Any, n: int, work: Path, budget: float) -> Figures:
    from harness.iked import Iked

    f = Figures()
    xa, xb = work / f"a-{n}.xml", work / f"b-{n}.xml"
    # tunnels 1..n, then n+1 (the one more), then n+2 (warm-up: lazy imports and first-use caches
    # must not count as per-tunnel memory)
    p2a = [P2(f"t{i}", "gw", a.inner_net4, b.inner_net4, BASE_PORT + i) for i in range(n + 2)]
    p2b = [P2(f"t{i}", "gw", b.inner_net4, a.inner_net4, BASE_PORT + i) for i in range(n + 2)]
    xa.write_text(iked_xml([P1("gw", a.outer4, b.outer4)], p2a))
    xb.write_text(iked_xml([P1("gw", b.outer4, a.outer4)], p2b))
    ia, ib = Iked(a, dataplane="none", log_level="errors"), Iked(b, dataplane="none", log_level="errors")
    try:
        f["define"] = _t(lambda: ia.put(xa))
        ib.put(xb)
        ia.start()
        ib.start()
        ia.ike("cmd=activate", "phase=2", f"numlist={n + 2}", "wait")
        assert ia.proc is not None and ib.proc is not None
        pid, rpid = find_process(ia.proc.pid, "python"), find_process(ib.proc.pid, "python")
        rss0 = rss_kib(pid)
        prof = PROFILE / f"scale-{n}-establish-iked.txt" if PROFILE else None
        rprof = PROFILE / f"scale-{n}-establish-iked-responder.txt" if PROFILE else None
        with Profiler(pid, prof), Profiler(rpid, rprof):
            t0 = time.perf_counter()
            # In slices: one command for all N would wait on a reply of N results, and the client
            # reads replies in a way that is quadratic in their size (see docs/performance.md).
            for lo in range(1, n + 1, ACTIVATE_SLICE):
                hi = min(n, lo + ACTIVATE_SLICE - 1)
                ia.ike("cmd=activate", "phase=2", f"numlist={lo}-{hi}")
            # One IKE SA runs its CREATE_CHILD_SA exchanges in order: the last one up means all are.
            while not is_up(ia, n):
                if not ia.alive():
                    raise RuntimeError(f"iked died:\n{ia.log(40)}")
                if time.perf_counter() - t0 > budget:
                    break
                time.sleep(0.2)
            took = time.perf_counter() - t0
        rss1 = rss_kib(pid)
        up = n if is_up(ia, n) else count_up(ia, n)
        f["reached"] = up
        f["establish"] = took if up >= n else took * n / max(up, 1)
        f["kib_per_tunnel"] = (rss1 - rss0) / max(up, 1)
        with Profiler(pid, PROFILE / f"scale-{n}-list-iked.txt" if PROFILE else None, idle=False):
            f["list"] = _timed_or_limit(lambda: ia.ike("cmd=list", timeout=LIST_LIMIT))
        f["list_db"] = _timed_or_limit(lambda: ia.ike("cmd=list", "db", timeout=LIST_LIMIT))
        f["one_more"] = _t(lambda: ia.ike("cmd=activate", "phase=2", f"numlist={n + 1}", "wait"))
    finally:
        ia.stop()
        ib.stop()
    return f


ACTIVATE_SLICE = 500
CHILDREN_PER_CONN = 2000
LIST_LIMIT = 120.0  # a listing slower than this is reported as taking at least this long


def _timed_or_limit(fn: Any) -> float:
    import subprocess

    try:
        return _t(fn)
    except subprocess.TimeoutExpired:
        log(f"    (a listing did not finish within {LIST_LIMIT:.0f} s; counted as {LIST_LIMIT:.0f} s)")
        return LIST_LIMIT


def is_up(d: Any, number: int) -> bool:
    r = d.ike("cmd=list", "phase=2", f"numlist={number}", "format=json", check=False)
    if r.returncode != 0:
        return False
    return any(t.get("state") == "established" for t in json.loads(r.stdout)["tunnels"])


def count_up(d: Any, n: int) -> int:
    """How many of 1..n are established, by bisection: they come up in order."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if is_up(d, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def charon_side(a: Any, b: Any, n: int, budget: float) -> Figures:
    from harness.strongswan import Charon, Child, Conn

    f = Figures()
    with Charon(a) as ca, Charon(b) as cb:
        for c, me, peer, me_id, peer_id in ((cb, b, a, "b", "a"), (ca, a, b, "a", "b")):
            children = [
                Child(f"t{i}", [f"{me.inner_net4}[tcp/{BASE_PORT + i}]"], [f"{peer.inner_net4}[tcp/{BASE_PORT + i}]"])
                for i in range(n + 2)
            ]
            for ch in children:
                ch.esp_proposals = ["aes128gcm16"]
            # swanctl sends a connection as one vici message, and charon refuses one with 10,000
            # children (swanctl dies with SIGPIPE): beyond CHILDREN_PER_CONN, charon gets several
            # connections, hence several IKE SAs, which only helps it (they run in parallel).
            conns = [
                Conn(
                    name=f"gw{k}",
                    local_addrs=[me.outer4],
                    remote_addrs=[peer.outer4],
                    proposals=["aes128gcm16-prfsha256-x25519"],
                    psk=PSK,
                    # the responder picks its connection by identity, not by selectors
                    local_id=f"{me_id}{k}.bench.example",
                    remote_id=f"{peer_id}{k}.bench.example",
                    options={"unique": "never"},
                    children=children[k * CHILDREN_PER_CONN : (k + 1) * CHILDREN_PER_CONN],
                )
                for k in range((n + 2 + CHILDREN_PER_CONN - 1) // CHILDREN_PER_CONN)
            ]
            f["define"] = _t(lambda c=c, conns=conns: c.load(*conns))
        if n + 2 > CHILDREN_PER_CONN:
            log(f"    charon: {len(conns)} connections of up to {CHILDREN_PER_CONN} children (vici message limit)")

        def ike_of(i: int) -> str:
            return f"gw{i // CHILDREN_PER_CONN}"

        ca.swanctl("--initiate", "--child", f"t{n + 1}", "--ike", ike_of(n + 1))  # warm-up, as for iked
        assert ca.proc is not None
        pid = find_process(ca.proc.pid, "charon")
        rss0 = rss_kib(pid)
        up = [0]
        ready, done = threading.Event(), threading.Event()

        def listen() -> None:
            with ca.session() as s:
                events = s.listen(["child-updown"])
                ready.set()
                try:
                    for _label, ev in events:
                        if ev.get("up") in (b"yes", "yes"):
                            up[0] += 1
                            if up[0] >= n:
                                done.set()
                                return
                except OSError:
                    return  # charon stopped (its budget ran out): nothing more to count
                finally:
                    with contextlib.suppress(Exception):
                        events.close()  # unregister while the socket is still open

        threading.Thread(target=listen, daemon=True).start()
        ready.wait(10)
        time.sleep(0.2)  # the registration reaches charon before the first child comes up
        t0 = time.perf_counter()
        with ca.session() as s:
            for i in range(n):
                for _ in s.initiate({"child": f"t{i}", "ike": ike_of(i), "timeout": "-1", "init-limits": "no"}):
                    pass
        done.wait(budget)
        took = time.perf_counter() - t0
        reached = up[0]
        f["reached"] = reached
        f["establish"] = took if reached >= n else took * n / max(reached, 1)
        f["kib_per_tunnel"] = (rss_kib(pid) - rss0) / max(reached, 1)
        f["list"] = _t(lambda: ca.swanctl("--list-sas", timeout=600))
        f["list_db"] = _t(lambda: ca.swanctl("--list-conns", timeout=600))
        f["one_more"] = _t(lambda: ca.swanctl("--initiate", "--child", f"t{n}", "--ike", ike_of(n)))
    return f


def table(label: str, ours: float, theirs: float, unit: str) -> None:
    log(f"    {label:41s} {ours:9.3f} {unit:3s} {theirs:9.3f} {unit}")


def main() -> int:
    p = parser(__doc__)
    p.add_argument(
        "--budget", type=float, default=480.0, help="seconds each daemon may take to establish one count (480)"
    )
    p.add_argument("--counts", default=None, help="comma-separated tunnel counts (default 1000,10000; tiny 8)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the initiating iked into DIR")
    p.add_argument("--iked-only", action="store_true", help="skip charon (for profiling)")
    a_ = p.parse_args()
    global PROFILE
    PROFILE = a_.profile
    if PROFILE:
        PROFILE.mkdir(parents=True, exist_ok=True)
    counts = [int(x) for x in (a_.counts or ("8" if a_.tiny else "1000,10000")).split(",")]
    why = prerequisites("ip")
    if why:
        not_measured(NAME, why, a_.tiny)
    ok, why = engine_available(2)
    if not ok:
        not_measured(NAME, why, a_.tiny)
    import tempfile

    from harness.netns import two_hosts

    compile_bytecode()  # the list and activate times include each command's start-up
    log(f"{NAME}: IKEv2, one IKE SA, {' and '.join(map(str, counts))} child SAs (iked: none data plane)")
    log(f"  {interpreter()}")
    rows: list[tuple[int, Figures, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="ike-bench-scale-") as tmp, two_hosts() as (a, b):
        log(f"  namespaces: {a.name} {b.name}")
        for n in counts:
            fi = iked_side(a, b, n, Path(tmp), a_.budget)
            log(f"  iked {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in fi.items()))
            if a_.iked_only:
                continue
            fs = charon_side(a, b, n, a_.budget)
            rows.append((n, fi, fs))
            for who, fig in (("iked", fi), ("charon", fs)):
                if fig["reached"] < n:
                    log(
                        f"  {who} established only {fig['reached']:.0f} of {n} within {a_.budget:.0f} s: its time "
                        f"is extrapolated (a lower bound), its memory and listing figures are at "
                        f"{fig['reached']:.0f} tunnels"
                    )
            log(f"  {n} tunnels{'':34s}iked       charon")
            table(f"define {n + 1} (ikedb put | swanctl --load-all)", fi["define"], fs["define"], "s")
            table("establish all", fi["establish"], fs["establish"], "s")
            table("daemon memory per tunnel", fi["kib_per_tunnel"], fs["kib_per_tunnel"], "KiB")
            table("ike cmd=list | swanctl --list-sas", fi["list"], fs["list"], "s")
            table("ike cmd=list db | swanctl --list-conns", fi["list_db"], fs["list_db"], "s")
            table("one more activate ... wait", fi["one_more"], fs["one_more"], "s")
    if not rows:
        return 0
    n, fi, fs = rows[-1]
    result(f"{NAME}/define-{n + 1}", fi["define"], fs["define"], "s", higher_is_better=False, digits=2)
    for m, gi, gs in rows:
        result(f"{NAME}/establish-{m}", gi["establish"], gs["establish"], "s", higher_is_better=False, digits=2)
    result(f"{NAME}/list-{n}", fi["list"], fs["list"], "s", higher_is_better=False, digits=3)
    result(f"{NAME}/list-db-{n}", fi["list_db"], fs["list_db"], "s", higher_is_better=False, digits=3)
    result(f"{NAME}/activate-one-more-{n}", fi["one_more"], fs["one_more"], "s", higher_is_better=False, digits=3)
    fi_mem, fs_mem = max(fi["kib_per_tunnel"], 0.01), max(fs["kib_per_tunnel"], 0.01)
    if fi["list"] >= 1.0:
        log(f"  target missed: listing {n} tunnels took {fi['list']:.2f} s (target < 1 s)")
    result(NAME, fi_mem, fs_mem, "KiB/tunnel", higher_is_better=False, digits=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
