"""Run a test body in a forked child inside a brand-new network namespace (unshare(CLONE_NEWNET)),
so that socket tests send nothing outside a namespace they made. Needs root: under CI=true its
absence fails the test, elsewhere it skips."""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import traceback
from collections.abc import Callable
from typing import Any

import pytest

CLONE_NEWNET = 0x40000000
ADDRS = ("198.18.0.1/32", "198.18.0.3/32")


def require_root() -> None:
    from harness import require  # the project's CI rule: fail under CI=true, skip elsewhere

    require(os.geteuid() == 0, "needs root to create a network namespace")


def run_in_private_netns(fn: Callable[[], Any]) -> Any:
    require_root()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out: tuple[bool, Any]
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            for a in ADDRS:
                subprocess.run(["ip", "addr", "add", a, "dev", "lo"], check=True)
            out = (True, fn())
        except BaseException:
            out = (False, traceback.format_exc())
        try:
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    if not chunks:
        pytest.fail("the namespace child died without a result")
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        pytest.fail(f"in the private namespace:\n{value}")
    return value
