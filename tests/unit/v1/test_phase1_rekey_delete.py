"""After a phase 1 rekey the old ISAKMP SA is deleted after a grace period, in both modes: charon
handled a Delete sent right behind AM3 before moving its quick mode SAs to the new SA, and deleted
them with it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ike.policy import Phase2Tunnel
from ike.proto.api import ChildSaDeleted, EngineSettings, IkeSaDeleted, IkeSaEstablished, SpiRemoved
from ike.proto.v1.engine import REKEYED_DELETE_DELAY_S

from .pair import Pair, basic, mirror, phase2, policies_b


def _rekeyed_pair(mode: str, settings: EngineSettings | None = None) -> tuple[Pair, Phase2Tunnel]:
    a1, _, b1, _ = basic(mode=mode)
    a1 = replace(a1, policy=replace(a1.policy, lifetime_s=1000))
    b1 = replace(b1, policy=replace(b1.policy, lifetime_s=1000))
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=3600)
    p = Pair(a1, [a2], policies_b(b1, mirror(a2, b1)), settings=settings)
    p.run()
    p.advance(840)  # the rekey comes 850..900 s in (rekey_margin 0.1 plus jitter)
    assert len(p.events("a", IkeSaEstablished)) == 1
    return p, a2


def _step_until(p: Pair, done: object, limit: float = 120.0) -> float:
    end = p.now + limit
    while p.now < end:
        p.advance(0.25)
        if done():  # type: ignore[operator]
            return p.now
    raise AssertionError("did not happen")


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_old_isakmp_sa_is_deleted_after_a_grace_period(mode: str) -> None:
    p, _ = _rekeyed_pair(mode)
    old_b = p.b
    assert old_b is not None
    t_new = _step_until(p, lambda: len(p.events("a", IkeSaEstablished)) == 2)
    ia = p.events("a", IkeSaEstablished)
    assert ia[1].rekey_of == ia[0].sa_id
    # Not right behind the last phase 1 message: the peer still has its old SA.
    assert not p.events("a", IkeSaDeleted) and old_b.is_established()
    t_del = _step_until(p, lambda: bool(p.events("a", IkeSaDeleted)))
    assert REKEYED_DELETE_DELAY_S - 0.25 <= t_del - t_new <= REKEYED_DELETE_DELAY_S + 0.5
    assert [(e.sa_id, e.reason) for e in p.events("a", IkeSaDeleted)] == [(ia[0].sa_id, "rekeyed")]
    assert not old_b.is_established()  # the Delete did go out, and the peer took it
    assert not p.events("a", ChildSaDeleted) and not p.events("b", ChildSaDeleted)


def test_grace_period_setting_and_retired_sa_starts_nothing() -> None:
    p, a2 = _rekeyed_pair("aggressive", EngineSettings(extra={"ikev1_rekeyed_delete_delay_s": 2.0}))
    t_new = _step_until(p, lambda: len(p.events("a", IkeSaEstablished)) == 2)
    new_b = p.b
    assert new_b is not None
    # During the grace period new work goes over the new SA (the second responder engine).
    p.a.start_child(a2, p.now)
    p.collect()
    p.run()
    assert len(new_b.child_ids()) == 1
    t_del = _step_until(p, lambda: bool(p.events("a", IkeSaDeleted)))
    assert 1.75 <= t_del - t_new <= 2.5


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_lost_delete_of_the_rekeyed_sa_is_sent_again_when_the_peer_uses_it(mode: str) -> None:
    """The old SA's Delete lost: b's DPD on that SA, which a no longer has, would find no one
    answering and take b's phase 2 SAs down. a keeps the deleted SA until it would have expired and
    answers with the Delete again; b then drops only the ISAKMP SA."""
    p, _ = _rekeyed_pair(mode)
    old_b = p.b
    assert old_b is not None
    t_new = _step_until(p, lambda: len(p.events("a", IkeSaEstablished)) == 2)
    old_cookie = p.events("a", IkeSaEstablished)[0].spi_i
    lost: list[bytes] = []

    def drop(i: int, to: str, dg: object) -> bool:
        data = dg.data  # type: ignore[attr-defined]
        # a's informationals under the old SA around the end of the grace period: its Delete (and
        # perhaps an ACK for b's DPD); the first copy of each
        near = abs(p.now - t_new - REKEYED_DELETE_DELAY_S) < 0.5
        if to == "b" and data[18] == 5 and data[:8] == old_cookie and near and data not in lost:
            lost.append(data)
            return True
        return False

    p.drop = drop
    _step_until(p, lambda: bool(p.events("a", IkeSaDeleted)))
    p.advance(45)  # b's DPD (30 s) on the old SA: answered with the Delete
    assert not old_b.is_established()
    assert [e.reason for e in p.events("b", IkeSaDeleted)] == ["deleted by peer"]
    assert not p.events("b", ChildSaDeleted) and old_b.child_ids()
    sent = [dg.data for to, dg in p.log if to == "b"]
    (delete,) = [d for d in lost if sent.count(d) > 1]
    assert sent.count(delete) == 3  # once (lost), then twice back to back for b's R-U-THERE
    # a keeps the route to the deleted SA until it would have expired (1000 s after it began)
    assert old_cookie not in [e.spi for e in p.events("a", SpiRemoved)]
    p.advance(200)
    assert old_cookie in [e.spi for e in p.events("a", SpiRemoved)]
