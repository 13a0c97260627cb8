"""Engine pairs in memory: main mode with a pre-shared key, quick mode, and the keys agree."""

from __future__ import annotations

from ike.proto.api import ChildSaEstablished, IkeSaEstablished, Role

from .pair import ESP_DEFAULT, Pair, basic, policies_b


def test_main_mode_psk_and_quick_mode() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert len(ia) == 1 and len(ib) == 1, (p.a_events, p.b_events)
    assert ia[0].role is Role.INITIATOR and ib[0].role is Role.RESPONDER
    assert ia[0].spi_i == ib[0].spi_i and ia[0].spi_r == ib[0].spi_r
    assert ia[0].initial_contact is False and ib[0].initial_contact is True
    ca, cb = p.children()
    assert len(ca) == 1 and len(cb) == 1
    x, y = ca[0], cb[0]
    assert isinstance(x, ChildSaEstablished)
    assert x.inbound == y.outbound and x.outbound == y.inbound
    assert x.inbound.spi != x.outbound.spi
    assert len(x.inbound.enc_key) == 16 and len(x.inbound.integ_key) == 20
    assert x.proposal == ESP_DEFAULT[0] and x.mode == "tunnel" and not x.udp_encap
    assert str(x.local_ts[0]) == "10.1.0.0/16" and str(y.local_ts[0]) == "10.2.0.0/16"
    assert not p.dropped()
    assert p.a.is_established() and p.b is not None and p.b.is_established()
    assert isinstance(ia[0], IkeSaEstablished)
