"""`make demo` is the project's main job: its script must run to the end and leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness import require_root, require_tools
from harness.netns import existing_namespaces

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_cleans_up() -> None:
    require_root()
    require_tools("ip", "ping")
    before = set(os.listdir("/tmp"))
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "=== Done" in proc.stdout
    # every part either ran or is announced as still to come
    assert "All parts ran" in proc.stdout or "Still to come" in proc.stdout
    if "Still to come" in proc.stdout:
        assert "\n  - " in proc.stdout
    used = set(re.findall(r"namespace (iketest-[0-9a-f]+)", proc.stdout))
    assert not used & existing_namespaces()
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("ike-demo-")}
