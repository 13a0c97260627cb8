"""Test harness: namespace hosts, packet capture, strongSwan as a peer, and the CI rule.

The CI rule: a test whose prerequisite (root, namespaces, strongSwan, a tool) is missing FAILS when
CI=true, because CI must really run it; elsewhere it skips, so a developer without root can still run
the unit tests. Use `require(condition, why)` for every such prerequisite.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["in_ci", "require", "require_root", "require_tools"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: object, why: str) -> None:
    """Skip the calling test when `condition` is false, or fail it under CI=true."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing under CI=true (would skip elsewhere): {why}", pytrace=False)
    pytest.skip(why)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces)")


def require_tools(*names: str) -> None:
    """Every named program must be on PATH (or be an existing absolute path)."""
    missing = [n for n in names if not (os.path.isabs(n) and os.access(n, os.X_OK)) and shutil.which(n) is None]
    require(not missing, f"missing programs: {', '.join(missing)} (run `make install`)")
