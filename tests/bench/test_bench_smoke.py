"""Each benchmark runs once at its tiny size (`--tiny`), so the benchmarks cannot rot: the run must
end with a well-formed RESULT line whose figures are positive and whose ratio agrees with them,
and it must leave no namespace behind. The figures themselves are not judged here (noisy machines);
`make bench` runs the full sizes.

Needs root, namespaces, iperf3 and strongSwan: under CI=true a missing prerequisite fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import require, require_root, require_tools
from harness.netns import existing_namespaces
from harness.strongswan import available

BENCH = Path(__file__).resolve().parents[2] / "bench"
RESULT = re.compile(
    r"^RESULT (?P<name>[a-z0-9/-]+) ratio=(?P<ratio>\d+\.\d\d) "
    r"iked=(?P<ours>\d+(?:\.\d+)?)(?P<unit1>\S*) strongswan=(?P<theirs>\d+(?:\.\d+)?)(?P<unit2>\S*)$"
)
# name -> (script, better when the figure is higher)
CASES = {
    "esp-throughput": ("esp_throughput.py", True),
    "setup-rate": ("setup_rate.py", True),
    "activate-latency": ("activate_latency.py", False),
    "scale": ("scale.py", False),
}


def _engines() -> bool:
    import importlib

    try:
        return all(hasattr(importlib.import_module(f"ike.proto.v{v}"), f"Ikev{v}Engine") for v in (1, 2))
    except ImportError:
        return False


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "iperf3")
    ok, why = available()
    require(ok, why)
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing (no TUN support)")
    require(_engines(), "the IKEv1/IKEv2 engines are not in this checkout")


def check_result(line: str, name: str, higher_is_better: bool) -> None:
    m = RESULT.match(line)
    assert m, f"not a RESULT line of the agreed form: {line!r}"
    assert m["name"] == name or m["name"].startswith(name + "/"), line
    ours, theirs, ratio = float(m["ours"]), float(m["theirs"]), float(m["ratio"])
    assert ours > 0 and theirs > 0 and ratio > 0, line
    assert m["unit1"] == m["unit2"] and m["unit1"], f"both figures need the same unit: {line}"
    want = ours / theirs if higher_is_better else theirs / ours
    # the figures are printed rounded; the ratio was computed from the unrounded ones
    assert abs(ratio - want) <= 0.02 + 0.05 * want, f"ratio {ratio} does not follow from the figures ({want:.3f})"


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_run(name: str) -> None:
    script, higher = CASES[name]
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--tiny"], capture_output=True, text=True, timeout=240, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"RESULT {name} "), f"last line is not the RESULT line:\n{out[-4000:]}"
    assert not [ln for ln in lines if ln.startswith("NOT MEASURED")], out[-4000:]
    for ln in lines:
        if ln.startswith("RESULT "):
            # sub-results (setup-rate/v1-..., scale/list-...) have the same form; scale's memory
            # headline is "less is better" like its timings
            check_result(ln, name, higher)
    made = {ns for ln in lines if ln.strip().startswith("namespaces:") for ns in ln.split()[1:]}
    assert made, "the benchmark did not say which namespaces it made"
    assert not made & existing_namespaces(), f"the benchmark left namespaces behind: {made & existing_namespaces()}"
