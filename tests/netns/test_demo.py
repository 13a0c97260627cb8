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
    # every part ran: database, daemon, encrypted traffic, removal
    assert "All parts ran" in proc.stdout, out
    assert "3 packets transmitted, 3 received" in proc.stdout
    assert re.search(r"on the wire: \d+ ESP packets .* 0 packets with an inside address in clear", proc.stdout)
    assert "No active tunnels" in proc.stdout or "no active tunnels" in proc.stdout.lower()
    used = set(re.findall(r"namespace (iketest-[0-9a-f]+)", proc.stdout))
    assert not used & existing_namespaces()
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("ike-demo-")}
