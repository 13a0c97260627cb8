"""Run every benchmark (full size, or --tiny) and print their RESULT lines together at the end.

    python bench/run.py [--tiny] [--only esp-throughput,setup-rate,...] [-- extra args for each]

Exit status: 0 when every benchmark printed its RESULT line; 1 when one failed; 3 when one could
not be measured yet (its counterpart is missing; see its NOT MEASURED line).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "esp-throughput": "esp_throughput.py",
    "setup-rate": "setup_rate.py",
    "activate-latency": "activate_latency.py",
    "scale": "scale.py",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    a = p.parse_args()
    names = [n for n in a.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    summary: list[str] = []
    rc = 0
    for name in names:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name]), *(["--tiny"] if a.tiny else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        proc.wait()
        took = time.perf_counter() - t0
        tail = [ln for ln in lines if ln.startswith(("RESULT ", "NOT MEASURED "))]
        summary += tail or [f"FAILED {name}: exit {proc.returncode}, no RESULT line"]
        print(f"== {name}: exit {proc.returncode} after {took:.0f} s", flush=True)
        if proc.returncode == 3:
            rc = max(rc, 3) if rc != 1 else rc
        elif proc.returncode != 0 or not tail:
            rc = 1
    print("\n== summary (ratio > 1: iked better; same machine, same run)")
    for line in summary:
        print(line)
    return rc


if __name__ == "__main__":
    sys.exit(main())
