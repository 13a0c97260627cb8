"""bench/engine_cpu.py, which measures a responder engine's CPU beyond the crypto (IKEv2 IKE_SA_INIT +
IKE_AUTH, IKEv1 main mode + quick mode), runs and prints its figure for each version. The figure is
judged in docs/performance.md, not here: a timed test on a shared machine proves nothing and fails
at random. Needs no privileges: the engines run in memory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "engine_cpu.py"


@pytest.mark.parametrize(
    ("args", "name", "exchanges"),
    [
        ([], "engine-cpu", r"IKE_SA_INIT \+ IKE_AUTH"),
        (["--version", "1"], "engine-cpu-v1", r"MM1\.\.MM6 \+ QM1\.\.QM3"),
    ],
    ids=["v2", "v1"],
)
def test_engine_cpu_prints_its_figure(args: list[str], name: str, exchanges: str) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), *args, "--tiny"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"FIGURE {name} beyond-crypto=(\d+\.\d{{3}})ms", last), r.stdout
    total = re.search(rf"per {exchanges}: (\d+\.\d+) ms, of which crypto (\d+\.\d+) ms", r.stdout)
    assert total and float(total[1]) > float(total[2]) > 0, r.stdout
