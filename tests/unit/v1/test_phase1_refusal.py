"""A peer that refuses phase 1 after the key exchange says why with a protected notify, and the
other side ends that SA at once with the reason: before, the notify went out unprotected, a side
with keys rightly ignored it, and learnt nothing (main mode: 'no answer' after the retransmissions;
aggressive mode: an ISAKMP SA only one side had, then failed quick modes, then DPD)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ike.policy import Identity
from ike.proto.api import Datagram, IkeSaDeleted, IkeSaEstablished, NegotiationFailed, PacketDropped
from ike.proto.v1.exchanges import informational
from ike.proto.v1.payloads import Exchange, NotifyType

from .pair import A_IP, B_IP, Pair, basic, policies_b
from .pki import Pki
from .test_engine_certs import _tunnels


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-refusal"))


def _sent(p: Pair, to: str, exchange: int) -> list[bytes]:
    return [dg.data for t, dg in p.log if t == to and dg.data[18] == exchange]


def _one_round_trip(p: Pair) -> None:
    """Deliver what is on the wire without letting the clock move: no retransmission can happen."""
    t0 = p.now
    p.run()
    assert p.now == t0


@pytest.mark.parametrize("auth", ["psk", "rsa"])
def test_main_mode_identity_refused_in_mm5(pki: Pki, auth: str) -> None:
    if auth == "psk":
        a1, a2, b1, b2 = basic()
        a1 = replace(a1, local_id=Identity.parse("a.example.org"))  # b expects 198.18.0.1
    else:
        a1, a2, b1, b2, _, _ = _tunnels(pki, "rsa", "main", "fqdn")
        b1 = replace(b1, remote_id=Identity.parse("zzz.example.org"))
    p = Pair(a1, [a2], policies_b(b1, b2))
    _one_round_trip(p)
    (fb,) = p.events("b", NegotiationFailed)
    assert fb.notify == "INVALID_ID_INFORMATION"
    (fa,) = p.events("a", NegotiationFailed)
    assert fa.phase == 1 and fa.notify == "INVALID_ID_INFORMATION"
    assert "the peer refused phase 1: INVALID_ID_INFORMATION" in fa.reason and "identit" in fa.reason
    assert not p.events("a", IkeSaEstablished) and not p.a.is_established() and p.a.is_finished()
    assert len(_sent(p, "b", Exchange.MAIN)) == 3  # MM1, MM3, MM5: nothing retransmitted
    assert p.a.get_timer() is None


def test_main_mode_certificate_refused_in_mm5(pki: Pki, tmp_path: Path) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "ecdsa", "main", "fqdn")
    b1 = replace(b1, credentials=replace(b1.credentials, ca_file=Pki(tmp_path).ca_file))  # b trusts another CA
    p = Pair(a1, [a2], policies_b(b1, b2))
    _one_round_trip(p)
    (fa,) = p.events("a", NegotiationFailed)
    assert fa.notify == "AUTHENTICATION_FAILED" and "the peer refused phase 1: AUTHENTICATION_FAILED" in fa.reason
    assert not p.a.is_established() and p.a.is_finished()


def test_aggressive_mode_certificate_refused_in_am3(pki: Pki, tmp_path: Path) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "ecdsa", "aggressive", "fqdn")
    b1 = replace(b1, credentials=replace(b1.credentials, ca_file=Pki(tmp_path).ca_file))
    p = Pair(a1, [a2], policies_b(b1, b2))
    _one_round_trip(p)
    assert "does not chain" in p.events("b", NegotiationFailed)[0].reason
    # a took the SA as established at AM3 (and started quick mode under it) until the refusal came
    (ea,) = p.events("a", IkeSaEstablished)
    (fa,) = p.events("a", NegotiationFailed)
    assert fa.phase == 1 and fa.notify == "AUTHENTICATION_FAILED"
    assert fa.reason.startswith("the peer refused phase 1: AUTHENTICATION_FAILED")
    (da,) = p.events("a", IkeSaDeleted)
    assert da.sa_id == ea.sa_id and "refused" in da.reason
    assert not p.a.is_established()
    p.advance(120)  # nothing left to retransmit, no DPD: the SA is gone
    assert len(_sent(p, "b", Exchange.QUICK)) == 1 and len(p.events("a", NegotiationFailed)) == 1


def test_main_mode_initiator_refusing_mm6_ends_the_responders_sa(pki: Pki) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "rsa", "main", "fqdn")
    a1 = replace(a1, remote_id=Identity.parse("zzz.example.org"))
    p = Pair(a1, [a2], policies_b(b1, b2))
    _one_round_trip(p)
    assert p.events("a", NegotiationFailed)[0].notify == "INVALID_ID_INFORMATION"
    (eb,) = p.events("b", IkeSaEstablished)
    (fb,) = p.events("b", NegotiationFailed)
    assert fb.notify == "INVALID_ID_INFORMATION" and "refused phase 1" in fb.reason
    assert p.b is not None and not p.b.is_established()
    assert [d.sa_id for d in p.events("b", IkeSaDeleted)] == [eb.sa_id]


def test_aggressive_mode_initiator_refusing_am2_ends_the_responders_negotiation(pki: Pki, tmp_path: Path) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "ecdsa", "aggressive", "fqdn")
    a1 = replace(a1, credentials=replace(a1.credentials, ca_file=Pki(tmp_path).ca_file))  # a trusts another CA
    p = Pair(a1, [a2], policies_b(b1, b2))
    _one_round_trip(p)
    assert p.events("a", NegotiationFailed)[0].notify == "AUTHENTICATION_FAILED"
    (fb,) = p.events("b", NegotiationFailed)
    assert fb.phase == 1 and fb.notify == "AUTHENTICATION_FAILED" and "refused phase 1" in fb.reason
    assert not p.events("b", IkeSaEstablished) and p.b is not None and p.b.is_finished()


def test_a_confirmed_sa_survives_an_isakmp_error_notify() -> None:
    """Once the peer has shown it holds the SA (here: quick mode under it), an error notify for
    protocol ISAKMP is reported, not taken as a refusal of phase 1."""
    a1, a2, b1, b2 = basic(mode="aggressive")
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    assert p.children()[0] and p.b is not None
    sa_b = next(iter(p.b._sas.values()))  # the responder's ISAKMP SA, to speak as the peer
    data = informational.notify(sa_b, NotifyType.INVALID_ID_INFORMATION)
    p.a.receive_datagram(Datagram(data, (A_IP, 500), (B_IP, 500)), p.now)
    p.collect()
    assert p.a.is_established() and not p.events("a", NegotiationFailed)
    assert any("INVALID_ID_INFORMATION" in d.reason for d in p.events("a", PacketDropped))


def test_an_unprotected_refusal_is_still_ignored_once_there_are_keys() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ea = p.events("a", IkeSaEstablished)[0]
    forged = informational.plain_notify(ea.spi_i, ea.spi_r, NotifyType.AUTHENTICATION_FAILED)
    p.a.receive_datagram(Datagram(forged, (A_IP, 500), (B_IP, 500)), p.now)
    p.collect()
    assert p.a.is_established() and not p.events("a", NegotiationFailed)
