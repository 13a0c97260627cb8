"""Retransmission, loss, duplicates, deletes, DPD and rekeys, with the fake clock."""

from __future__ import annotations

import random

import pytest

from ike.policy import DpdAction
from ike.proto.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    EngineSettings,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    SpiAdded,
    SpiRemoved,
)
from ike.proto.v1 import demux

from .pair import A_IP, B_IP, Pair, basic, mirror, phase1, phase2, policies_b


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_first_message_lost_is_retransmitted(mode: str) -> None:
    a1, a2, b1, b2 = basic(mode=mode)
    p = Pair(a1, [a2], policies_b(b1, b2), start=False)
    p.wire.clear()  # the very first datagram is lost
    p.run(until=p.now + 60)
    ia, ib = p.established()
    assert ia and ib
    assert p.children()[0] and p.children()[1]


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pfs", [0, 19])
def test_a_third_of_datagrams_dropped(mode: str, seed: int, pfs: int) -> None:
    a1, a2, b1, b2 = basic(mode=mode, pfs=pfs)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(retransmit_tries=8), start=False)
    # Seeded random loss; every other datagram lost (both parities) is in test_strict_loss.py.
    rng = random.Random(seed)
    p.drop = lambda i, to, dg: rng.random() < 1 / 3
    if rng.random() < 1 / 3:
        p.wire.clear()
    p.run(until=p.now + 200)
    ia, ib = p.established()
    assert len(ia) == 1 and len(ib) == 1, (p.a_events, p.b_events)
    ca, cb = p.children()
    assert len(ca) == 1 and len(cb) == 1, (p.a_events, p.b_events)
    assert ca[0].inbound == cb[0].outbound
    assert not p.events("a", NegotiationFailed) and not p.events("b", NegotiationFailed)


def test_last_main_mode_message_lost_is_answered_again() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2), start=False)
    # MM6 is the 6th datagram (index 5)
    p.drop = lambda i, to, dg: i == 5
    p.run(until=p.now + 60)
    assert len(p.established()[0]) == 1 and len(p.established()[1]) == 1
    assert len(p.children()[0]) == 1


def test_gives_up_after_retransmissions() -> None:
    a1, a2, b1, b2 = basic()
    s = EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=3)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=s, start=False)
    p.drop = lambda i, to, dg: True
    p.wire.clear()
    p.run(until=p.now + 100)
    f = p.events("a", NegotiationFailed)
    assert len(f) == 1 and "3 retransmissions" in f[0].reason
    assert p.sent == 7  # first try + 3 retransmissions of two copies each
    sent_at: list[float] = []
    p2 = Pair(a1, [a2], policies_b(b1, b2), settings=s, start=False)
    p2.drop = lambda i, to, dg: sent_at.append(p2.now) is None  # lose everything, note when it went
    p2.wire.clear()
    t0 = p2.now
    p2.run(until=p2.now + 100)
    # backoff: 1, 2, 4 s apart (two copies back to back each time), given up after another 8 s
    assert [t - t0 for t in sent_at] == [1, 1, 3, 3, 7, 7]
    assert p2.now - t0 == 15 and p2.events("a", NegotiationFailed)
    assert p.a.get_timer() is None
    assert p.events("a", SpiRemoved) and p.a.finished


def test_duplicate_datagram_gets_the_same_answer() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.deliver_one()  # MM1 -> b, b answers MM2
    first = [dg for to, dg in p.log if to == "a"]
    assert p.b is not None
    _to, mm1 = p.log[0]
    from ike.proto.api import Datagram

    p.b.receive_datagram(Datagram(mm1.data, (B_IP, 500), (A_IP, 500)), p.now)
    again = p.b.datagrams_to_send()
    assert len(again) == 1 and again[0].data == first[0].data
    assert demux(mm1.data) is not None and demux(mm1.data).our_spi is None  # type: ignore[union-attr]


def test_spi_events_and_demux() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    (ea,) = p.events("a", SpiAdded)
    (eb,) = p.events("b", SpiAdded)
    ia = p.established()[0][0]
    assert ea.spi == ia.spi_i and eb.spi == ia.spi_r
    for _, dg in p.log[1:]:
        d = demux(dg.data)
        assert d is not None and d.version == 1
        assert d.our_spi == ia.spi_r and d.peer_spi == ia.spi_i
    assert demux(b"\x00" * 10) is None


def test_delete_child_and_phase1() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca, cb = p.children()
    p.a.delete_child(ca[0].child_id, p.now)
    p.collect()
    p.run()
    assert p.events("a", ChildSaDeleted)[0].reason == "deleted locally"
    assert p.events("b", ChildSaDeleted)[0].reason == "deleted by peer"
    assert p.events("b", ChildSaDeleted)[0].child_id == cb[0].child_id
    # a new one, then the phase 1 goes; the phase 2 SA stays (IKEv1/AIX rule)
    p.a.start_child(a2, p.now)
    p.collect()
    p.run()
    assert len(p.children()[0]) == 2
    p.a.delete(p.now)
    p.collect()
    p.run()
    assert p.events("a", IkeSaDeleted)[0].reason == "deleted locally"
    assert p.events("b", IkeSaDeleted)[0].reason == "deleted by peer"
    assert not p.a.is_established() and p.b is not None and not p.b.is_established()
    assert len(p.events("a", ChildSaDeleted)) == 1
    # ... until they expire
    p.advance(3700)
    assert len(p.events("a", ChildSaDeleted)) == 2 and p.events("a", ChildSaDeleted)[1].reason == "expired"
    assert p.a.finished


def test_responder_deletes_child() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    assert p.b is not None
    cb = p.children()[1][0]
    p.b.delete_child(cb.child_id, p.now)
    p.collect()
    p.run()
    assert p.events("a", ChildSaDeleted)[0].reason == "deleted by peer"


def test_dpd_alive_and_dead() -> None:
    a1, a2, b1, b2 = basic(dpd=10)
    s = EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=2)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=s)
    p.run()
    n0 = len(p.log)
    p.advance(35)  # a few DPD rounds, answered
    assert len(p.log) > n0 + 4
    assert not p.events("a", IkeSaDeleted) and not p.events("b", IkeSaDeleted)
    # the peer goes away
    p.drop = lambda i, to, dg: True
    p.advance(60)
    dels = p.events("a", IkeSaDeleted)
    assert dels and dels[0].reason == "peer unreachable (DPD)"
    assert p.events("a", ChildSaDeleted)[0].reason == "peer unreachable (DPD)"
    assert not p.a.is_established()


@pytest.mark.parametrize("action", [DpdAction.RESTART, DpdAction.HOLD, DpdAction.CLEAR])
def test_dpd_loss_is_reported_not_restarted(action: DpdAction) -> None:
    """Restarting is the daemon's (it retries with back-off): the engine reports the loss with the
    tunnel's DPD action and sends nothing more."""
    from dataclasses import replace

    a1, a2, b1, b2 = basic(dpd=10)
    a1 = replace(a1, policy=replace(a1.policy, dpd_action=action))
    s = EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=2)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=s)
    p.run()
    state = {"dead": True}
    p.drop = lambda i, to, dg: state["dead"]
    for _ in range(400):
        p.advance(0.5)
        if p.events("a", IkeSaDeleted):
            break
    dels = p.events("a", IkeSaDeleted)
    assert [(d.reason, d.dpd_action) for d in dels] == [("peer unreachable (DPD)", action.value)]
    assert [c.reason for c in p.events("a", ChildSaDeleted)] == ["peer unreachable (DPD)"]
    state["dead"] = False
    p.forget_b()  # the peer came back with no state
    n0 = len(p.log)
    p.advance(30)
    assert len(p.log) == n0 and len(p.events("a", IkeSaEstablished)) == 1
    assert not p.a.is_established() and p.a.get_timer() is None


def test_phase2_rekey() -> None:
    a1, _, b1, _ = basic()
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=600, pfs=14)
    b2 = mirror(a2, b1)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    p.advance(580)
    ca, cb = p.children()
    assert len(ca) == 2 and len(cb) == 2, (p.a_events, p.b_events)
    assert ca[1].rekey_of == ca[0].child_id and cb[1].rekey_of == cb[0].child_id
    assert ca[1].inbound.spi != ca[0].inbound.spi
    assert ca[1].inbound == cb[1].outbound
    da, db = p.events("a", ChildSaDeleted), p.events("b", ChildSaDeleted)
    assert [d.reason for d in da] == ["rekeyed"] and [d.reason for d in db] == ["rekeyed"]
    # and again, and again
    p.advance(1200)
    assert len(p.children()[0]) == 4 and len(p.events("b", ChildSaDeleted)) == 3


def test_phase1_rekey_keeps_children_and_uses_new_sa() -> None:
    a1, _, b1, _ = basic()
    from dataclasses import replace

    a1 = replace(a1, policy=replace(a1.policy, lifetime_s=1000))
    b1 = replace(b1, policy=replace(b1.policy, lifetime_s=1000))
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=3600)
    b2 = mirror(a2, b1)
    # the peer's rekey arrives as a new main mode; in memory, one responder engine per negotiation
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    first_b = p.b
    assert first_b is not None
    p.advance(960)
    ia = p.events("a", IkeSaEstablished)
    assert len(ia) == 2 and ia[1].rekey_of == ia[0].sa_id and ia[1].spi_i != ia[0].spi_i
    assert p.events("a", IkeSaDeleted)[0].reason == "rekeyed"
    # the old responder heard the delete for its SA; the new one is a second engine
    assert len(p.bs) == 2 and p.b is not first_b
    assert [e.reason for e in p.events("b", IkeSaDeleted)] == ["deleted by peer"]
    assert first_b.child_ids() and not first_b.is_established()
    # phase 2 SAs were not touched; a new child goes over the new SA
    assert not p.events("a", ChildSaDeleted)
    p.a.start_child(a2, p.now)
    p.collect()
    p.run()
    ca = p.events("a", ChildSaEstablished)
    assert len(ca) == 2 and ca[1].sa_id == ia[1].sa_id


def test_phase1_expiry_without_rekey_on_responder() -> None:
    a1, a2, b1, b2 = basic(lifetime_s=500, dpd=0)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    p.drop = lambda i, to, dg: True  # the initiator's rekey never arrives
    p.advance(510)
    assert p.events("b", IkeSaDeleted)[0].reason == "expired"


def test_start_child_before_phase1_is_queued() -> None:
    a1, a2, b1, b2 = basic()
    a3 = phase2(a1, "10.3.0.0/16", "10.4.0.0/16", number=2)
    p = Pair(a1, [a2], policies_b(b1, b2, mirror(a3, b1)))
    p.a.start_child(a3, p.now)
    p.collect()
    p.run()
    assert len(p.children()[0]) == 2


def test_phase1_kilobyte_lifetime_triggers_rekey() -> None:
    a1, a2, b1, b2 = basic(lifetime_kb=2, dpd=5)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    p.advance(120)  # DPD traffic uses up the 2 KB
    ia = p.events("a", IkeSaEstablished)
    assert len(ia) >= 2 and ia[1].rekey_of == ia[0].sa_id
    assert p.events("a", IkeSaDeleted)[0].reason == "rekeyed"


def test_nat_mapping_change_is_followed() -> None:
    a1, a2, b1, b2 = basic(dpd=0)
    b1 = phase1(B_IP, "0.0.0.0")
    b2 = mirror(a2, b1)
    p = Pair(a1, [a2], policies_b(b1, b2), nat=True)
    p.run()
    assert p.b is not None
    # the NAT now maps a's 4500 to another port: b answers there after an authenticated message
    from ike.proto.api import Datagram

    p.a.start_child(a2, p.now)
    for dg in p.a.datagrams_to_send():
        p.b.receive_datagram(Datagram(dg.data, (B_IP, 4500), ("198.18.1.1", 45000)), p.now)
    out = p.b.datagrams_to_send()
    assert out and all(d.remote == ("198.18.1.1", 45000) for d in out)


def test_transport_mode_behind_nat_sends_nat_oa(monkeypatch: pytest.MonkeyPatch) -> None:
    from ike.proto.v1.isakmp_sa import IsakmpSa
    from ike.proto.v1.payloads.id import NatOaPayload

    sent: list[list[object]] = []
    real = IsakmpSa.protected  # quick mode 1 and 2 (HASH first) are sealed by `protected`

    def protected(
        self: IsakmpSa, exchange: int, msgid: int, payloads: list[object], prefix: bytes = b"", flags: int = 0
    ) -> bytes:
        sent.append(list(payloads))
        return real(self, exchange, msgid, payloads, prefix, flags)

    monkeypatch.setattr(IsakmpSa, "protected", protected)
    a1, _, b1, _ = basic()
    a2 = phase2(a1, A_IP, B_IP, mode="transport")
    p = Pair(a1, [a2], policies_b(b1, mirror(a2, b1)), settings=EngineSettings(extra={"force_udp_encap": True}))
    p.run()
    ca, cb = p.children()
    assert cb[0].udp_encap
    assert ca[0].mode == "transport" and ca[0].udp_encap
    oas = [[x for x in m if isinstance(x, NatOaPayload)] for m in sent]
    with_oa = [o for o in oas if o]
    assert len(with_oa) == 2 and all(len(o) == 2 for o in with_oa)  # QM1 and QM2


def test_dpd_retransmissions_use_new_sequence_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    from ike.proto.v1.exchanges import informational

    seqs: list[int] = []
    real = informational.r_u_there

    def spy(sa, seq):  # type: ignore[no-untyped-def]
        seqs.append(seq)
        return real(sa, seq)

    monkeypatch.setattr(informational, "r_u_there", spy)
    a1, a2, b1, b2 = basic(dpd=10)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=4))
    p.run()
    state = {"lose_acks": True}
    p.drop = lambda i, to, dg: state["lose_acks"] and to == "a"
    p.advance(12.5)  # first R-U-THERE and one retransmission, ACKs lost
    state["lose_acks"] = False
    p.advance(20)
    a_seqs = seqs[: len(seqs)]
    assert len(set(a_seqs)) == len(a_seqs) and len(a_seqs) >= 3
    assert not p.events("a", IkeSaDeleted)
    assert p.a.is_established()


def test_children_are_not_refreshed_without_a_phase1() -> None:
    a1, _, b1, _ = basic(dpd=0)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=600)
    p = Pair(a1, [a2], policies_b(b1, mirror(a2, b1)))
    p.run()
    assert p.b is not None
    p.b.delete(p.now)  # the peer deletes its ISAKMP SA; the phase 2 SA stays up
    p.collect()
    p.run()
    assert p.events("a", IkeSaDeleted)[0].reason == "deleted by peer"
    sent = len(p.log)
    p.advance(700)
    assert len(p.log) == sent  # no new phase 1 (and no SA left to send a Delete under)
    assert [d.reason for d in p.events("a", ChildSaDeleted)] == ["expired"]
    assert len(p.events("a", IkeSaEstablished)) == 1 and p.a.finished
