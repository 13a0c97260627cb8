"""dpd_action=hold between two iked hosts: when the peer vanishes, the tunnel's traffic is held (routed
to the data plane and dropped, never sent in the clear) and the first packet after the peer is back
negotiates the tunnel again, with no `ike` command (strongSwan's dpd_action=trap)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import require_root, require_tools
from harness.iked import Iked
from harness.netns import Host, two_hosts

sys.path.insert(0, str(Path(__file__).parent))

from test_iked import listing, side_xml


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    require_root()
    require_tools("ip", "ping")
    with two_hosts() as ab:
        yield ab


def _until(cond: Any, timeout: float, what: str, log: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()}")
        time.sleep(0.3)


@pytest.mark.parametrize("version", [1, 2])
def test_dpd_hold_traps_traffic_and_renegotiates_on_the_next_packet(hosts: tuple[Host, Host], version: int) -> None:
    a, b = hosts
    fast = ["--retransmit-timeout", "0.5", "--retransmit-tries", "2"]
    with Iked(a, extra_args=fast) as ia:
        ia.put(side_xml(a, b, version, dpd=1, dpd_action="hold"))
        ib = Iked(b)
        ib.put(side_xml(b, a, version, dpd=1, dpd_action="hold"))
        try:
            ib.start()
            ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
            assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0
            assert ib.proc is not None
            ib.proc.kill()  # the peer just disappears: no deletes
            ib.proc.wait(5)

            def held() -> bool:
                return any(t.get("held") for t in listing(ia, "phase=1")["tunnels"])

            _until(held, 40, "DPD to notice the dead peer and hold the tunnel", lambda: ia.log(40))
            t = next(t for t in listing(ia, "phase=1")["tunnels"] if t.get("held"))
            assert t["state"] == "deleted" and "held" in t["last_error"], t
            assert not listing(ia, "phase=2")["tunnels"] or all(
                x["state"] != "established" for x in listing(ia, "phase=2")["tunnels"]
            )
            # Held, not cleared: the peer's subnet is still routed into the data plane (no cleartext).
            routes = a.run(["ip", "-4", "route", "show", "table", "4501"]).stdout
            assert b.inner_net4 in routes, routes
            assert "reason:" in ia.ike("cmd=list").stdout

            ib.socket_path.unlink(missing_ok=True)  # left by the killed daemon
            ib.start()  # back, with no memory of the old SAs and no autostart
            # Traffic alone brings the tunnel back: the first packets are dropped while it negotiates.
            _until(
                lambda: a.ping(b.inner4, count=1, src=a.inner4, timeout=5).returncode == 0,
                40,
                "a packet for the held tunnel to renegotiate it",
                lambda: ia.log(40),
            )
            est = [t for t in listing(ia, "phase=2")["tunnels"] if t["state"] == "established"]
            assert len(est) == 1 and est[0]["role"] == "i", est
            assert not held()  # the trap is gone once the new SA carries the traffic
            assert "traffic for a held tunnel; activating it" in ia.log(400)
            assert a.ping(b.inner4, count=3, src=a.inner4).returncode == 0
        finally:
            ib.stop()
