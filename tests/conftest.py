"""Top-level test configuration: makes `harness` importable, marks tests by folder, and states the CI rule.

CI rule (see docs/testing.md): tests under netns/ and interop/ need root, namespaces and strongSwan. When
CI=true a missing prerequisite is a failure, elsewhere a skip; `harness.require(condition, why)` does that.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import in_ci, require, require_root, require_tools

__all__ = ["in_ci", "require", "require_root", "require_tools"]

_FOLDER_MARKERS = {"netns": "netns", "interop": "interop", "bench": "bench"}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (timeout(1), CI stopping a run) would end Python without running `finally` blocks, leaving
    # namespaces and daemons behind; as KeyboardInterrupt, pytest tears fixtures and context managers down.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    for name, text in (
        ("netns", "needs root and network namespaces"),
        ("interop", "runs strongSwan as the peer"),
        ("bench", "benchmark smoke run"),
    ):
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(root)
        except ValueError:
            continue
        marker = _FOLDER_MARKERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


def pytest_report_header(config: pytest.Config) -> str:
    return f"CI={'true: missing prerequisites FAIL' if in_ci() else 'unset: missing prerequisites skip'}"
