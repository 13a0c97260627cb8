"""dpd_action=restart: when a peer vanishes, the manager keeps retrying with back-off until the
peer answers again, then the tunnel is back; `ike cmd=remove` ends the retries.
dpd_action=hold: the tunnel's selectors are trapped in the data plane and traffic (an acquire)
brings the tunnel back; `ike cmd=remove` releases the trap."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ike.daemon import manager as manager_mod
from ike.daemon.engines import RealEngines
from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.policy import DpdAction
from ike.proto.api import Datagram, EngineSettings

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_real_engines import A, B, defs

FAST = EngineSettings(retransmit_timeout_s=0.02, retransmit_tries=2)


def restart_defs(local: str, remote: str, version: int, action: DpdAction = DpdAction.RESTART) -> IndexedPolicies:
    base = defs(local, remote, version)
    p1 = base.p1_by_number[1]
    policy = dataclasses.replace(p1.policy, dpd_delay_s=1, dpd_action=action)
    return IndexedPolicies([dataclasses.replace(p1, policy=policy)], [base.p2_by_number[1]], [])


class LossyNet:
    """Two managers. `kill_b()` makes B's host vanish: nothing reaches it and the dead instance
    sends nothing; `reboot_b()` brings up a fresh B with no memory of the old SAs."""

    def __init__(self, loop: asyncio.AbstractEventLoop, version: int, action: DpdAction = DpdAction.RESTART) -> None:
        self.loop = loop
        self.pa, self.pb = restart_defs(A, B, version, action), restart_defs(B, A, version, action)
        self.b_generation = 0
        self.dp_a = NoneDataPlane()
        self.a = TunnelManager(loop, self.pa, RealEngines(self.pa, FAST), self._sender(A), self.dp_a)
        self.b = self._new_b()
        self.by_addr = {A: self.a, B: self.b}
        self.sent_to_b_while_down = 0

    def _new_b(self) -> TunnelManager:
        return TunnelManager(self.loop, self.pb, RealEngines(self.pb, FAST), self._sender(B), NoneDataPlane())

    def _sender(self, who: str) -> Callable[[Datagram], None]:
        generation = self.b_generation

        def send(dg: Datagram) -> None:
            if who == B and generation != self.b_generation:
                return  # a dead host sends nothing
            if dg.remote[0] == B and self.b_generation < 0:
                self.sent_to_b_while_down += 1
                return
            self.loop.call_soon(self.by_addr[dg.remote[0]].receive, dg.data, dg.remote, dg.local)

        return send

    def kill_b(self) -> None:
        self.b_generation = -1

    def reboot_b(self) -> None:
        self.b_generation = 1
        self.b = self.by_addr[B] = self._new_b()

    def a_states(self) -> list[str]:
        return [t["state"] for t in self.a.listing("1", None, "i")["tunnels"]]


async def until(cond: object, timeout: float) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("version", [1, 2])
def test_restart_retries_until_the_peer_is_back(version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "RESTART_DELAY_S", 0.1)
    loop = asyncio.new_event_loop()
    try:
        net = LossyNet(loop, version)

        async def go() -> None:
            net.a.activate(net.pa.by_numbers([1], None), None)
            await until(lambda: "established" in net.a_states(), 10)
            net.kill_b()
            await until(lambda: len(net.a._restarts) == 1 and net.a._restarts[1][1] >= 2, 20)
            assert "established" not in net.a_states()
            down_sends = net.sent_to_b_while_down
            net.reboot_b()
            await until(lambda: "established" in net.a_states(), 20)
            assert not net.a._restarts  # success ends the retries
            assert down_sends > 3  # it really did try while B was away

        loop.run_until_complete(go())
    finally:
        loop.close()


def test_remove_ends_restart_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "RESTART_DELAY_S", 0.1)
    loop = asyncio.new_event_loop()
    try:
        net = LossyNet(loop, 2)

        async def go() -> None:
            net.a.activate(net.pa.by_numbers([1], None), None)
            await until(lambda: "established" in net.a_states(), 10)
            net.kill_b()
            await until(lambda: bool(net.a._restarts), 20)
            net.a.remove(1, None)
            assert not net.a._restarts
            before = net.sent_to_b_while_down
            await asyncio.sleep(0.8)  # past several back-off periods
            assert net.sent_to_b_while_down == before

        loop.run_until_complete(go())
    finally:
        loop.close()


@pytest.mark.parametrize("version", [1, 2])
def test_hold_traps_the_selectors_and_an_acquire_brings_the_tunnel_back(version: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        net = LossyNet(loop, version, DpdAction.HOLD)
        p2 = net.pa.p2_by_number[1]

        async def go() -> None:
            net.a.activate(net.pa.by_numbers([1], None), None)
            await until(lambda: "established" in net.a_states(), 10)
            assert not net.dp_a.traps
            net.kill_b()
            await until(lambda: bool(net.dp_a.traps), 20)
            assert list(net.dp_a.traps.values()) == [((p2.local_ts,), (p2.remote_ts,))]
            assert "established" not in net.a_states()
            held = [t for t in net.a.listing("1", None, None)["tunnels"] if t["held"]]
            assert len(held) == 1 and "held" in held[0]["last_error"], held
            sent = net.sent_to_b_while_down
            await asyncio.sleep(0.5)
            assert net.sent_to_b_while_down == sent  # unlike restart, nothing is tried without traffic
            net.reboot_b()
            (trap_id,) = net.dp_a.traps
            net.a.on_acquire(trap_id)  # what the data plane reports when a packet hits the trap
            net.a.on_acquire(trap_id)  # a second packet while negotiating starts nothing more
            await until(lambda: any(t["state"] == "established" for t in net.a.listing("2", None, None)["tunnels"]), 10)
            assert len([s for s in net.a.slots.values() if not s.dead]) == 1
            assert not net.dp_a.traps  # the new SA carries the traffic; the trap is gone
            assert not any(t["held"] for t in net.a.listing("1", None, None)["tunnels"])

        loop.run_until_complete(go())
    finally:
        loop.close()


def test_remove_releases_a_hold() -> None:
    loop = asyncio.new_event_loop()
    try:
        net = LossyNet(loop, 2, DpdAction.HOLD)

        async def go() -> None:
            net.a.activate(net.pa.by_numbers([1], None), None)
            await until(lambda: "established" in net.a_states(), 10)
            net.kill_b()
            await until(lambda: bool(net.dp_a.traps), 20)
            (trap_id,) = net.dp_a.traps
            net.a.remove(None, None)  # ike cmd=remove all
            assert not net.dp_a.traps
            sent = net.sent_to_b_while_down
            net.a.on_acquire(trap_id)  # a late report for the released trap does nothing
            await asyncio.sleep(0.2)
            assert net.sent_to_b_while_down == sent

        loop.run_until_complete(go())
    finally:
        loop.close()
