"""Where iked's memory per established tunnel goes: two iked (none data plane), N child SAs under
one IKEv2 phase 1; with --trace the initiating iked runs under tracemalloc and, on SIGUSR1, writes
the allocation sites that grew since the baseline (one warm-up tunnel up) per tunnel.

    python bench/memory_profile.py [--count 1000] [--trace]

Without --trace it reports the RSS growth per tunnel and what is left after gc.collect() and
malloc_trim(0) (freed heap handed back), which separates live data from allocator high water.

A profiling aid for docs/performance.md, not a benchmark: it prints no RESULT line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import P1, P2, find_process, iked_xml, log, parser, rss_kib

# Runs iked with tracemalloc; SIGUSR2 takes the baseline, SIGUSR1 writes the growth per site.
WRAPPER = r"""
import signal, sys, tracemalloc
state = {}
out, count, trace = sys.argv.pop(1), int(sys.argv.pop(1)), sys.argv.pop(1) == "trace"
if trace:
    tracemalloc.start(12)
def base(*_):
    if trace:
        state["s0"] = tracemalloc.take_snapshot()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
def dump(*_):
    import ctypes, gc
    r0 = rss()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back: what stays is what is live
    r1 = rss()
    if not trace:
        with open(out, "w") as f:
            f.write(f"RSS {r0} KiB before, {r1} KiB after gc.collect() + malloc_trim(0)\n")
        return
    s1 = tracemalloc.take_snapshot()
    filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = s1.filter_traces(filt).compare_to(state["s0"].filter_traces(filt), "traceback")
    total = sum(s.size_diff for s in stats)
    with open(out, "w") as f:
        f.write(f"total {total / count:.0f} B per tunnel (traced Python allocations)\n")
        f.write(f"RSS {r0} KiB before, {r1} KiB after gc.collect() + malloc_trim(0)\n")
        for s in stats[:40]:
            f.write(f"\n{s.size_diff / count:8.0f} B/tunnel {s.count_diff / count:6.1f} blocks\n")
            for fr in s.traceback.format()[-12:]:
                f.write("    " + fr + "\n")
signal.signal(signal.SIGUSR2, base)
signal.signal(signal.SIGUSR1, dump)
from ike.daemon.main import main
sys.exit(main())
"""


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--trace", action="store_true", help="tracemalloc growth by allocation site (slow)")
    a_ = p.parse_args()
    n = a_.count
    import tempfile

    from harness.iked import Iked
    from harness.netns import two_hosts

    with tempfile.TemporaryDirectory(prefix="ike-bench-mem-") as tmp, two_hosts() as (a, b):
        log(f"  namespaces: {a.name} {b.name}")
        out = Path(tmp) / "growth.txt"
        p2a = [P2(f"t{i}", "gw", a.inner_net4, b.inner_net4, 1000 + i) for i in range(n + 1)]
        p2b = [P2(f"t{i}", "gw", b.inner_net4, a.inner_net4, 1000 + i) for i in range(n + 1)]
        ia = Iked(a, dataplane="none", log_level="errors")
        ib = Iked(b, dataplane="none", log_level="errors")
        try:
            ia.put(iked_xml([P1("gw", a.outer4, b.outer4)], p2a))
            ib.put(iked_xml([P1("gw", b.outer4, a.outer4)], p2b))
            ib.start()
            mode = "trace" if a_.trace else "rss"
            cmd = [sys.executable, "-c", WRAPPER, str(out), str(n), mode, "--dataplane", "none", "--listen", a.outer4]
            cmd.append("--no-autostart")
            with ia.out_path.open("ab") as o:
                ia.proc = a.popen(cmd, env=ia.env, stdout=o, stderr=subprocess.STDOUT)
            while not ia.socket_path.exists():
                if ia.proc.poll() is not None:
                    raise RuntimeError(ia.log())
                time.sleep(0.05)
            ia.ike("cmd=activate", "phase=2", f"numlist={n + 1}", "wait")
            pid = find_process(ia.proc.pid, "python")
            rss0 = rss_kib(pid)
            import os

            os.kill(pid, signal.SIGUSR2)
            time.sleep(1.0)
            t0 = time.perf_counter()
            ia.ike("cmd=activate", "phase=2", f"numlist=1-{n}", "wait", timeout=3600)
            log(f"  {n} tunnels up in {time.perf_counter() - t0:.1f} s (under tracemalloc)")
            rss1 = rss_kib(pid)
            os.kill(pid, signal.SIGUSR1)
            for _ in range(600):
                if out.exists() and out.stat().st_size:
                    time.sleep(0.5)
                    break
                time.sleep(0.5)
            log(f"  RSS growth {(rss1 - rss0) / n:.1f} KiB per tunnel (baseline {rss0} KiB, tracemalloc adds its own)")
            log(out.read_text())
        finally:
            ia.stop()
            ib.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
