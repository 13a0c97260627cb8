"""bench/engine_cpu.py --version 1, which measures the IKEv1 responder's CPU (main mode + quick mode)
beyond the crypto, runs and prints its figure (judged in docs/performance.md, not here: a timed test
on a shared machine proves nothing and fails at random)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "engine_cpu.py"


def test_engine_cpu_v1_prints_its_figure() -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--version", "1", "--tiny"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"FIGURE engine-cpu-v1 beyond-crypto=(\d+\.\d{3})ms", last)
    assert m, r.stdout
    total = re.search(r"per MM1\.\.MM6 \+ QM1\.\.QM3: (\d+\.\d+) ms, of which crypto (\d+\.\d+) ms", r.stdout)
    assert total and float(total[1]) > float(total[2]) > 0, r.stdout
