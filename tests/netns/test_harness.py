"""The namespace harness itself: two hosts can talk on the outside, not on the inside, and leave nothing."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness import require_root, require_tools
from harness.netns import capture, existing_namespaces, two_hosts


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "ping", "tcpdump")


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_ping_outside_and_no_route_inside(v6: bool) -> None:
    with two_hosts(v6=v6) as (a, b):
        assert a.name != b.name and a.name.startswith("iketest-")
        assert a.ping(b.outer4).returncode == 0, a.ping(b.outer4).stdout
        assert b.ping(a.outer4).returncode == 0
        # inside addresses are local to each host ...
        assert a.ping(a.inner4, count=1).returncode == 0
        # ... and unreachable from the other one until a tunnel joins them
        assert a.ping(b.inner4, count=1, src=a.inner4, timeout=5).returncode != 0
        if v6:
            assert a.outer6 and b.outer6 and b.inner6
            assert a.ping(b.outer6).returncode == 0
            assert a.ping(b.inner6, count=1, timeout=5).returncode != 0


def test_capture_sees_plain_icmp() -> None:
    with two_hosts() as (a, b):
        with capture(b, "veth0", "icmp") as cap:
            assert a.ping(b.outer4, count=3).returncode == 0
        pkts = cap.between(a.outer4, b.outer4)
        assert len(pkts) == 6, cap.packets  # 3 requests, 3 replies
        assert cap.kinds() == {"icmp"}


def test_cleanup_leaves_no_namespace_and_no_process() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), two_hosts() as (a, b):
        names = [a.name, b.name]
        sleeper = a.popen(["sleep", "300"])
        assert set(names) <= existing_namespaces()
        raise RuntimeError("boom")
    assert names and not set(names) & existing_namespaces()
    assert sleeper.poll() is not None


def test_namespaces_of_dead_runs_are_reaped_and_live_ones_kept() -> None:
    gone_pid = subprocess.Popen(["true"])  # its pid is free once it has exited
    gone_pid.wait()
    stale = f"iketest-{gone_pid.pid}-abc123"
    live = f"iketest-{os.getpid()}-def456"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
        with two_hosts() as (a, b):
            names = existing_namespaces()
            assert stale not in names and live in names and {a.name, b.name} <= names
        sleeper.wait(5)  # killed by the reaper
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
