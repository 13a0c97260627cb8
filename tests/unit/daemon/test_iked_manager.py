"""The tunnel manager's bookkeeping, driven by the toy engine (iked_toy.py) between two managers
on one event loop, with the real `none` data plane."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from iked_toy import ToyFactory

from ike.daemon.manager import ManagerError, TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.policy import (
    DataManagementPolicy,
    DpdAction,
    EspProposal,
    Group,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)
from ike.proto.api import Datagram

A, B = "198.18.0.1", "198.18.0.2"


def definitions(local: str, remote: str, version: int = 2, n_p2: int = 2) -> IndexedPolicies:
    km = KeyManagementPolicy(
        "km",
        version=version,
        proposals=(IkeProposal("aes-cbc", 256, "sha2-256", "sha2-256", 14),),
        dpd_action=DpdAction.CLEAR,
    )
    dm = DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 256, None),))
    p1 = Phase1Tunnel(1, "gw", Identity.parse(local), Identity.parse(remote), local, remote, km)
    lnet = "198.19.1.0/24" if local == A else "198.19.2.0/24"
    rnet = "198.19.2.0/24" if local == A else "198.19.1.0/24"
    p2s = [
        Phase2Tunnel(
            10 + i,
            f"net{i}",
            1,
            TrafficSelector.subnet(lnet, protocol=0 if i == 0 else 6),
            TrafficSelector.subnet(rnet, protocol=0 if i == 0 else 6),
            dm,
        )
        for i in range(n_p2)
    ]
    return IndexedPolicies([p1], p2s, [Group("peers", (remote,))])


class Net:
    """Two managers whose datagrams reach each other through the loop (and can be cut)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, version: int = 2) -> None:
        self.loop = loop
        self.up = True
        self.pa, self.pb = definitions(A, B, version), definitions(B, A, version)
        self.fa, self.fb = ToyFactory(self.pa), ToyFactory(self.pb)
        self.da, self.db = NoneDataPlane(), NoneDataPlane()
        self.a = TunnelManager(loop, self.pa, self.fa, self._to(B), self.da)
        self.b = TunnelManager(loop, self.pb, self.fb, self._to(A), self.db)
        self.by_addr = {A: self.a, B: self.b}

    def _to(self, _dst: str) -> Any:
        def send(dg: Datagram) -> None:
            if self.up:
                target = self.by_addr[dg.remote[0]]
                self.loop.call_soon(target.receive, dg.data, dg.remote, dg.local)

        return send


@pytest.fixture
def net() -> Iterator[Net]:
    loop = asyncio.new_event_loop()
    try:
        yield Net(loop)
    finally:
        loop.close()


def settle(net: Net, seconds: float = 0.12) -> None:
    net.loop.run_until_complete(asyncio.sleep(seconds))


def test_activate_both_phases_numbers_tunnels_and_installs_children(net: Net) -> None:
    res = net.a.activate(net.pa.by_numbers([10, 11], None), None)
    assert [(r["phase"], r["status"]) for r in res] == [(1, "started"), (2, "started"), (2, "started")]
    settle(net)
    la = net.a.listing("1+", None, None)["tunnels"]
    assert len(la) == 1 and la[0]["state"] == "established" and la[0]["role"] == "i"
    assert [c["state"] for c in la[0]["phase2"]] == ["established", "established"]
    # both phase 2 tunnels share the one phase 1 SA
    assert {c["phase1_tunnel"] for c in la[0]["phase2"]} == {la[0]["tunnel"]}
    lb = net.b.listing("1+", None, None)["tunnels"]
    assert lb[0]["role"] == "r" and len(lb[0]["phase2"]) == 2
    assert len(net.da.children) == 2 and len(net.db.children) == 2
    # data plane ids are daemon-wide, distinct from engine-local child ids
    assert sorted(net.da.children) == [1, 2]


def test_activate_again_reports_existing_tunnel(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    res = net.a.activate(net.pa.by_numbers([10], None), None)
    assert [r["status"] for r in res] == ["exists", "exists"]
    assert len(net.a.p1) == 1 and len(net.a.p2) == 1


def test_phase2_starts_under_existing_phase1(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([1], 1), 1)
    settle(net)
    assert len(net.a.p1) == 1 and not net.a.p2
    res = net.a.activate(net.pa.by_numbers([11], 2), 2)
    assert [r["status"] for r in res] == ["exists", "started"]
    settle(net)
    assert [e.state for e in net.a.p2.values()] == ["established"]
    assert len(net.fa.engines) == 1  # no second IKE SA


def test_responder_side_tunnel_can_carry_new_phase2(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    # b responded; asking b for another phase 2 under the same definition reuses that IKE SA
    res = net.b.activate(net.pb.by_numbers([11], 2), 2)
    assert res[0]["status"] == "exists"
    settle(net)
    assert len(net.fb.engines) == 1
    assert sorted(e.role.value for e in net.b.p2.values()) == ["i", "r"]


def test_wait_futures_resolve_on_success_and_failure(net: Net) -> None:
    async def go() -> list[dict[str, Any]]:
        res = net.a.activate(net.pa.by_numbers([10], None), None)
        futs = net.a.waiters_for(res, None)
        assert futs
        await asyncio.wait_for(asyncio.gather(*futs), 2)
        return net.a.outcome(res)

    out = net.loop.run_until_complete(go())
    assert [r["state"] for r in out] == ["established", "established"]

    net.up = False
    net.a.remove(None, None)
    settle(net, 0.05)

    async def fail() -> list[dict[str, Any]]:
        res = net.a.activate(net.pa.by_numbers([10], None), None)
        await asyncio.wait_for(asyncio.gather(*net.a.waiters_for(res, None)), 2)
        return net.a.outcome(res)

    out = net.loop.run_until_complete(fail())
    assert [r["state"] for r in out] == ["failed", "failed"]
    assert out[0]["message"] == "peer did not answer"
    assert "phase 1 failed" in out[1]["message"]


def test_failure_shows_reason_and_both_offers_on_responder(net: Net) -> None:
    # b has no definition named like a's: the responder records a failed tunnel with both offers
    p1 = net.pa.p1_by_number[1]
    renamed = IndexedPolicies([Phase1Tunnel(1, "other", p1.local_id, p1.remote_id, A, B, p1.policy)], [], [])
    net.fb.set_policies(IndexedPolicies([], [], []))
    net.a.activate(renamed.by_numbers([1], 1), 1)
    settle(net)
    lb = net.b.listing("1", None, "r")["tunnels"]
    assert lb and lb[0]["state"] == "failed"
    assert lb[0]["offered"] and lb[0]["peer_offered"]
    la = net.a.listing("1", None, None)["tunnels"]
    assert la[0]["state"] == "failed" and "NO_PROPOSAL_CHOSEN" in la[0]["last_error"]


def test_list_filters_by_role_phase_and_numbers(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10, 11], None), None)
    settle(net)
    assert net.a.listing("1", None, "r")["tunnels"] == []
    assert len(net.a.listing("1", None, "i")["tunnels"]) == 1
    two = net.a.listing("2", [2], None)
    assert [t["tunnel"] for t in two["tunnels"]] == [2]
    assert two["tunnels"][0]["phase1"]["tunnel"] == 1
    assert net.a.listing("2", [2, 9], None)["missing"] == [9]
    one = net.a.listing("1", None, None)["tunnels"][0]
    assert "phase2" not in one and one["phase2_tunnels"] == [1, 2]


def test_remove_phase2_only_keeps_phase1_and_tells_peer(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10, 11], None), None)
    settle(net)
    out = net.a.remove(2, [1])
    assert out == [{"phase": 2, "tunnel": 1, "name": "net0", "status": "removed"}]
    settle(net)
    assert list(net.a.p2) == [2] and len(net.da.children) == 1
    assert net.a.p1[1].state == "established"
    assert sum(1 for e in net.b.p2.values() if e.live) == 1 and len(net.db.children) == 1


def test_remove_unknown_number_is_a_clear_error(net: Net) -> None:
    with pytest.raises(ManagerError, match="no active phase 1 tunnel numbered 7"):
        net.a.remove(1, [7])
    with pytest.raises(ManagerError, match="phase 2 tunnel numbered 3"):
        net.a.remove(2, [3])


@pytest.mark.parametrize("version", [1, 2])
def test_remove_phase1_lets_children_run_unrefreshed_until_they_expire(version: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        n = Net(loop, version)
        n.a.activate(n.pa.by_numbers([10], None), None)
        settle(n)
        n.a.remove(1, [1])
        settle(n)
        assert 1 not in n.a.p1
        (child,) = n.a.p2.values()
        assert child.live and child.refresh is False and len(n.da.children) == 1
        # listed as an orphan under 1+ and shown as not refreshed
        rec = n.a.listing("1+", None, None)["tunnels"]
        assert rec[0]["phase"] == 2 and rec[0]["refresh"] is False
        # a new activation makes a new phase 1, it does not revive the removed one
        n.a.activate(n.pa.by_numbers([1], 1), 1)
        settle(n)
        assert [e.number for e in n.a.p1.values() if e.live] == [2]
        # the data plane's soft expiry does not rekey it; the hard one removes it
        n.a.on_dataplane_expire(child.dp_id or 0, hard=False)
        assert child.rekeys == 0
        n.a.on_dataplane_expire(child.dp_id or 0, hard=True)
        settle(n)
        assert not n.da.children and child.state == "expired"
        if version == 2:
            # the unlisted IKE SA went with its last child: b saw it deleted
            assert next(e.state for e in n.b.p1.values()) == "deleted"
    finally:
        loop.close()


def test_remove_phase1_v2_child_rekey_is_refused(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    net.a.remove(1, [1])
    (slot,) = net.a.slots.values()
    (child,) = net.a.p2.values()
    old_spi = child.spi_in
    # the engine rekeys on its own (the toy replaces and deletes the old SA at once)
    slot.engine.rekey_child(child.child_id or 0, net.a.now())
    net.a._pump(slot)
    settle(net)
    assert child.rekeys == 0 and child.spi_in == old_spi  # the new SA was not taken on
    assert child.state == "deleted" and not net.da.children
    assert not net.a.slots  # and the IKE SA went with its last child


def test_dataplane_soft_expiry_rekeys_and_keeps_tunnel_number(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    (entry,) = net.a.p2.values()
    old_dp, old_spi = entry.dp_id, entry.spi_in
    net.a.on_dataplane_expire(old_dp or 0, hard=False)
    settle(net)
    assert entry.number == 1 and entry.rekeys == 1 and entry.state == "established"
    assert entry.dp_id != old_dp and entry.spi_in != old_spi
    assert list(net.da.children) == [entry.dp_id]  # the old SA left the data plane


def test_simultaneous_rekey_keeps_the_tunnel_and_its_surviving_sa(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    (slot,) = net.a.slots.values()
    (entry,) = net.a.p2.values()
    engine = slot.engine
    winner, _loser = engine.simultaneous_rekey(entry.child_id)  # type: ignore[attr-defined]
    net.a._pump(slot)
    assert entry.state == "established" and entry.number == 1 and entry.rekeys == 2
    assert entry.child_id == winner and list(entry.sas) == [winner]
    assert list(net.da.children) == [entry.dp_id]  # the old SA and the loser left the data plane
    # the data plane's hard expiry of the surviving SA ends the tunnel; of an unknown one, nothing
    net.a.on_dataplane_expire(999, hard=True)
    assert entry.state == "established"
    net.a.on_dataplane_expire(entry.dp_id or 0, hard=True)
    assert entry.state == "expired" and not net.da.children


def test_hard_expiry_of_an_old_sa_leaves_the_tunnel(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    (slot,) = net.a.slots.values()
    (entry,) = net.a.p2.values()
    old_dp = entry.dp_id
    # a rekey whose old SA the engine has not deleted yet: both are installed
    engine = slot.engine
    engine._child_up(engine.children[entry.child_id].phase2, 99, rekey_of=entry.child_id)  # type: ignore[attr-defined]
    net.a._pump(slot)
    assert len(net.da.children) == 2
    net.a.on_dataplane_expire(old_dp or 0, hard=True)
    assert entry.state == "established" and entry.child_id == 99 and len(net.da.children) == 1


def test_remove_all_then_list_empty(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10, 11], None), None)
    settle(net)
    out = net.a.remove(None, None)
    assert sorted((r["phase"], r["tunnel"]) for r in out) == [(1, 1), (2, 1), (2, 2)]
    settle(net)
    assert net.a.listing("1+", None, None)["tunnels"] == []
    assert not net.da.children and not net.a.by_spi and not net.a.slots


def test_peer_vanishing_fails_only_that_tunnel(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    # garbage and unknown SPIs are dropped without touching the tunnel
    net.a.receive(b"\x00" * 3, (A, 500), (B, 500))
    net.a.receive(b"\x01" * 40, (A, 500), (B, 500))
    assert net.a.p1[1].state == "established"
    assert net.a.stats.datagrams_unmatched == 2


def test_engine_exception_ends_only_its_association(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    (slot,) = net.a.slots.values()

    def boom(dg: Datagram, now: float) -> None:
        raise RuntimeError("bug")

    slot.engine.receive_datagram = boom  # type: ignore[method-assign]
    net.b.remove(2, None)  # b's delete reaches a's broken engine
    settle(net)
    assert net.a.stats.engine_errors == 1
    assert net.a.p1[1].state == "deleted" and "internal error" in (net.a.p1[1].last_error or "")
    assert not net.da.children
    # and the manager still works
    net.a.activate(net.pa.by_numbers([1], 1), 1)
    settle(net)
    assert net.a.p1[2].state == "established"


def test_remid_group_and_ipaddr_resolution(net: Net) -> None:
    assert [t.phase1.number for t in net.pa.by_remote_id("peers", None)] == [1]
    res = net.a.activate(net.pa.by_addresses(A, B, 2), 2)
    assert [r["phase"] for r in res] == [1, 2, 2]
    settle(net)
    assert all(e.state == "established" for e in net.a.p2.values())


def test_dead_entries_are_bounded(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    import ike.daemon.manager as manager_mod

    monkeypatch.setattr(manager_mod, "MAX_DEAD_ENTRIES", 3)
    p1 = net.pa.p1_by_number[1]
    for i in range(6):
        net.a._dead_p1(p1, f"failure {i}")
    assert [e.last_error for e in net.a.p1.values()] == ["failure 3", "failure 4", "failure 5"]
    # live tunnels are never pruned
    net.a.activate(net.pa.by_numbers([1], 1), 1)
    settle(net)
    for i in range(4):
        net.a._dead_p1(p1, f"later {i}")
    assert sum(1 for e in net.a.p1.values() if e.live) == 1 and len(net.a.p1) == 4


def test_data_plane_refusal_fails_the_tunnel_with_its_reason(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([1], 1), 1)
    settle(net)
    # the none data plane refuses an id it already holds: make the next install collide
    net.da.children[net.a._next_dp] = None  # type: ignore[assignment]
    net.a.activate(net.pa.by_numbers([10], 2), 2)
    settle(net)
    (entry,) = net.a.p2.values()
    assert entry.state == "failed" and "data plane refused the SA" in (entry.last_error or "")
    assert net.a.p1[1].state == "established"
    assert not any(e.live for e in net.b.p2.values())  # the peer was told to delete it


def test_liveness_feed_reports_new_traffic_once(net: Net) -> None:
    from ike.dataplane.base import ChildCounters

    class Seen(NoneDataPlane):
        """The none data plane, plus the time of a last packet, as the userspace one reports."""

        last: float | None = None

        def counters(self, child_id: int) -> ChildCounters:
            c = super().counters(child_id)
            c.last_used = self.last
            return c

    dp = Seen()
    net.a.dataplane = dp
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    (slot,) = net.a.slots.values()
    engine = slot.engine
    net.a.feed_liveness()
    assert engine.heard == []  # type: ignore[attr-defined]
    dp.last = 123.5
    net.a.feed_liveness()
    net.a.feed_liveness()
    assert engine.heard == [123.5]  # type: ignore[attr-defined]
    net.a._closing = True  # stop the periodic re-arm before the loop closes
