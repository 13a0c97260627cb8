"""Restarting iked brings its autostart tunnels back, and the peer replaces what it still held.

The initiator's iked is stopped with SIGTERM while an autostart tunnel carries traffic, then started
again on the same database. Either its deletes reach the peer (a clean stop), or they are lost (the
outer link is down while it stops): then the peer still holds the old SAs, and only the
INITIAL_CONTACT of the new negotiation tells it to drop them.

Needs root and namespaces: under CI=true a missing prerequisite fails the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import require_root, require_tools
from harness.aixvpn import Tunnel
from harness.iked import Iked
from harness.netns import Host, two_hosts


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    require_root()
    require_tools("ip", "ping")
    with two_hosts() as ab:
        yield ab


def listing(d: Iked) -> list[dict[str, Any]]:
    tunnels: list[dict[str, Any]] = json.loads(d.ike("cmd=list", "format=json").stdout)["tunnels"]
    return tunnels


def wait_up(d: Iked, timeout: float = 20) -> dict[str, Any]:
    """The one established phase 1 tunnel with an established phase 2, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        live = [t for t in listing(d) if t["state"] == "established"]
        if len(live) == 1 and [c["state"] for c in live[0].get("phase2", [])] == ["established"]:
            return live[0]
        assert time.monotonic() < deadline, json.dumps(listing(d), indent=1) + d.log(40)
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("version", "deletes"), [(2, "delivered"), (2, "lost"), (1, "lost")], ids=["v2-clean", "v2-lost", "v1-lost"]
)
def test_restart_brings_autostart_tunnel_back(
    hosts: tuple[Host, Host], tmp_path: Path, version: int, deletes: str
) -> None:
    a, b = hosts
    ta = Tunnel(a.outer4, b.outer4, "restart key", a.inner_net4, b.inner_net4, version=version, autostart=True)
    workdir = tmp_path / "iked-a"  # kept across the restart: the same database
    with Iked(b) as ib:
        ib.put(ta.swapped().xml())
        ia = Iked(a, workdir=workdir, autostart=True)
        ia.put(ta.xml())
        try:
            ia.start()
            before = wait_up(ia)
            old_b = wait_up(ib)
            assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0, ia.log(40)

            if deletes == "lost":
                a.run(["ip", "link", "set", "veth0", "down"])
            assert ia.stop() == 0  # SIGTERM: deletes every SA and exits cleanly
            if deletes == "lost":
                a.run(["ip", "link", "set", "veth0", "up"])
                # The peer was told nothing: it still holds the old tunnel.
                assert [t["state"] for t in listing(ib)] == ["established"]
            else:
                deadline = time.monotonic() + 5
                while any(t["state"] == "established" for t in listing(ib)):
                    assert time.monotonic() < deadline, ib.log(30)
                    time.sleep(0.1)

            ia = Iked(a, workdir=workdir, autostart=True)
            ia.start()
            after = wait_up(ia)
            assert after["role"] == "i" and after["spi_i"] != before["spi_i"]
            ping = a.ping(b.inner4, count=3, src=a.inner4)
            assert ping.returncode == 0, ping.stdout + ia.log(40) + ib.log(40)

            # The peer holds exactly the new tunnel; the old one ended (told, or by INITIAL_CONTACT).
            tb = listing(ib)
            live = [t for t in tb if t["state"] == "established"]
            assert len(live) == 1 and live[0]["spi_i"] == after["spi_i"], json.dumps(tb, indent=1)
            assert live[0]["phase2"][0]["packets_in"] >= 3
            stale = [t for t in tb if t["tunnel"] == old_b["tunnel"]]
            if deletes == "lost":
                assert stale and "INITIAL_CONTACT" in (stale[0]["last_error"] or ""), json.dumps(tb, indent=1)
            else:
                assert not stale or "INITIAL_CONTACT" not in (stale[0]["last_error"] or "")
        finally:
            ia.stop()
