"""Engine pairs in memory with a fake clock: modes, algorithms, PFS, several phase 2 SAs, NAT-T,
lifetimes, failures with both offers, weak algorithms only when configured."""

from __future__ import annotations

import pytest

from ike.policy import EspProposal, IkeProposal, TrafficSelector
from ike.proto.api import (
    ChildSaEstablished,
    EngineSettings,
    IkeSaEstablished,
    NegotiationFailed,
)
from ike.proto.transforms import ENCR, INTEG

from .pair import A_IP, B_IP, Pair, basic, mirror, phase1, phase2, policies_b


def _check_child_keys(x: ChildSaEstablished, y: ChildSaEstablished) -> None:
    assert x.inbound == y.outbound and x.outbound == y.inbound
    e = ENCR[x.proposal.encr]
    assert len(x.inbound.enc_key) == e.key_material_len(x.proposal.encr_keylen)
    want_integ = INTEG[x.proposal.integ].key_len if x.proposal.integ else 0
    assert len(x.inbound.integ_key) == want_integ
    assert x.inbound.enc_key != x.outbound.enc_key


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("pfs", [0, 14, 16, 19, 31])
def test_modes_and_pfs(mode: str, pfs: int) -> None:
    a1, a2, b1, b2 = basic(mode=mode, pfs=pfs)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert len(ia) == len(ib) == 1, (p.a_events, p.b_events)
    ca, cb = p.children()
    assert len(ca) == len(cb) == 1
    assert ca[0].pfs_group == pfs == cb[0].pfs_group
    _check_child_keys(ca[0], cb[0])
    assert not p.dropped()


IKE_VARIANTS = [
    IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14),
    IkeProposal("aes-cbc", 192, "hmac-sha2-384-192", "hmac-sha2-384", 20),
    IkeProposal("aes-cbc", 256, "hmac-sha2-512-256", "hmac-sha2-512", 21),
    IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 31),
    IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 19),
    IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 15),
    IkeProposal("aes-cbc", 256, "hmac-sha2-384-192", "hmac-sha2-384", 16),
]


@pytest.mark.parametrize("ike", IKE_VARIANTS, ids=str)
def test_phase1_algorithms(ike: IkeProposal) -> None:
    a1, a2, b1, b2 = basic(proposals=(ike,))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert ia and ib and ia[0].proposal == ike == ib[0].proposal


ESP_VARIANTS = [
    EspProposal("aes-cbc", 128, "hmac-sha1-96"),
    EspProposal("aes-cbc", 256, "hmac-sha2-256-128"),
    EspProposal("aes-cbc", 192, "hmac-sha2-384-192"),
    EspProposal("aes-cbc", 256, "hmac-sha2-512-256"),
    EspProposal("aes-gcm-16", 128, None),
    EspProposal("aes-gcm-16", 256, None),
]


@pytest.mark.parametrize("esp", ESP_VARIANTS, ids=str)
def test_esp_algorithms(esp: EspProposal) -> None:
    a1, a2, b1, b2 = basic(esp=(esp,))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca, cb = p.children()
    assert ca and cb and ca[0].proposal == esp == cb[0].proposal
    _check_child_keys(ca[0], cb[0])
    if ENCR[esp.encr].aead:
        assert len(ca[0].inbound.enc_key) == esp.encr_keylen // 8 + 4  # salt at the end


def test_proposal_choice_follows_responder_order() -> None:
    x = IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14)
    y = IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19)
    a1, a2, _, _ = basic(proposals=(x, y))
    b1 = phase1(B_IP, A_IP, proposals=(y, x))
    e1, e2 = EspProposal("aes-cbc", 128, "hmac-sha1-96"), EspProposal("aes-gcm-16", 256, None)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", proposals=(e1, e2))
    b2 = phase2(b1, "10.2.0.0/16", "10.1.0.0/16", proposals=(e2, e1))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert ia[0].proposal == y == ib[0].proposal
    ca, cb = p.children()
    assert ca[0].proposal == e2 == cb[0].proposal


def test_several_phase2_under_one_phase1() -> None:
    a1, a2, b1, b2 = basic()
    a3 = phase2(a1, "10.3.0.0/24", "10.4.0.5", number=2, pfs=19)
    a4 = phase2(a1, "10.5.0.1-10.5.0.20", "10.6.0.0/24", number=3)
    a5 = phase2(a1, "10.7.0.1", "10.8.0.1", number=4)
    a5 = phase2(a1, "10.7.0.1", "10.8.0.1", number=4)
    from dataclasses import replace

    a5 = replace(a5, local_ts=TrafficSelector.parse("10.7.0.1", 6, 80), remote_ts=TrafficSelector.parse("10.8.0.1", 6))
    b = policies_b(b1, b2, mirror(a3, b1), mirror(a4, b1), mirror(a5, b1))
    p = Pair(a1, [a2, a3, a4], b)
    p.run()
    ca, cb = p.children()
    assert len(ca) == len(cb) == 3
    assert len(p.established()[0]) == 1
    p.a.start_child(a5, p.now)
    p.collect()
    p.run()
    ca, cb = p.children()
    assert len(ca) == len(cb) == 4
    last_a, last_b = ca[-1], cb[-1]
    assert last_a.local_ts[0] == TrafficSelector.parse("10.7.0.1", 6, 80)
    assert last_b.remote_ts[0] == TrafficSelector.parse("10.7.0.1", 6, 80)
    assert {str(c.local_ts[0]) for c in ca} == {
        "10.1.0.0/16",
        "10.3.0.0/24",
        "10.5.0.1-10.5.0.20",
        "10.7.0.1 proto 6 port 80",
    }
    for x, y in zip(ca, cb, strict=True):
        _check_child_keys(x, y)
    spis = {c.inbound.spi for c in ca} | {c.inbound.spi for c in cb}
    assert len(spis) == 8


def test_responder_narrows_selectors() -> None:
    a1, _, b1, _ = basic()
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16")
    b2 = phase2(b1, "10.2.1.0/24", "10.1.0.0/16")
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca, cb = p.children()
    assert str(ca[0].remote_ts[0]) == "10.2.1.0/24" and str(cb[0].local_ts[0]) == "10.2.1.0/24"


def test_nat_traversal_moves_to_4500_and_encapsulates() -> None:
    a1, a2, b1, b2 = basic()
    b1 = phase1(B_IP, "0.0.0.0")
    b2 = mirror(a2, b1)
    p = Pair(a1, [a2], policies_b(b1, b2), nat=True)
    p.run()
    ia, ib = p.established()
    assert ia and ib, (p.a_events, p.b_events)
    assert ia[0].nat_local and not ia[0].nat_remote
    assert ib[0].nat_remote and not ib[0].nat_local
    assert ia[0].local[1] == 4500 and ia[0].remote == (B_IP, 4500)
    assert ib[0].local == (B_IP, 4500) and ib[0].remote[1] == 44500
    ca, cb = p.children()
    assert ca[0].udp_encap and cb[0].udp_encap
    assert ca[0].remote == (B_IP, 4500) and cb[0].remote == ("198.18.1.1", 44500)
    # everything after the ID exchange went over port 4500
    ports = [{dg.local[1], dg.remote[1]} for _, dg in p.log]
    assert all(ps <= {500, 40500} for ps in ports[:4])
    assert all(ps <= {4500, 44500} for ps in ports[4:])


@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("ipsec_mode", ["tunnel", "transport"])
def test_forced_udp_encapsulation(mode: str, ipsec_mode: str) -> None:
    a1, _, b1, _ = basic(mode=mode)
    a2 = phase2(a1, A_IP, B_IP, mode=ipsec_mode)
    b2 = mirror(a2, b1)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(extra={"force_udp_encap": True}),
             b_settings=EngineSettings())  # fmt: skip
    p.run()
    ia, ib = p.established()
    assert ia[0].nat_local and ib[0].nat_remote
    ca, cb = p.children()
    assert ca[0].udp_encap and cb[0].udp_encap and ca[0].mode == ipsec_mode == cb[0].mode
    assert ca[0].local[1] == 4500 and cb[0].local[1] == 4500


def test_phase1_proposal_mismatch_reports_both_offers() -> None:
    a1, a2, _, _ = basic()
    b1 = phase1(B_IP, A_IP, proposals=(IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 19),))
    p = Pair(a1, [a2], policies_b(b1))
    p.run(until=p.now + 100)
    fb = p.events("b", NegotiationFailed)
    assert fb and fb[0].phase == 1 and fb[0].notify == "NO_PROPOSAL_CHOSEN"
    assert any("dh19" in x for x in fb[0].offered) and any("dh14" in x for x in fb[0].peer_offered)
    fa = p.events("a", NegotiationFailed)
    assert fa and fa[0].notify == "NO_PROPOSAL_CHOSEN" and any("dh14" in x for x in fa[0].offered)
    assert not p.a.is_established()


def test_phase2_proposal_mismatch_reports_both_offers() -> None:
    a1, a2, b1, _ = basic()
    b2 = mirror(phase2(a1, "10.1.0.0/16", "10.2.0.0/16", proposals=(EspProposal("aes-gcm-16", 256, None),)), b1)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 100)
    assert p.established()[0]
    fb = p.events("b", NegotiationFailed)
    assert fb and fb[0].phase == 2 and fb[0].notify == "NO_PROPOSAL_CHOSEN"
    assert any("aes-gcm-16" in x for x in fb[0].offered) and any("aes-cbc" in x for x in fb[0].peer_offered)
    fa = p.events("a", NegotiationFailed)
    assert fa and fa[0].phase == 2 and fa[0].notify == "NO_PROPOSAL_CHOSEN"


def test_pfs_mismatch_fails_clearly() -> None:
    a1, a2, b1, _ = basic(pfs=14)
    b2 = mirror(phase2(a1, "10.1.0.0/16", "10.2.0.0/16", pfs=19), b1)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 100)
    fb = p.events("b", NegotiationFailed)
    assert fb and "PFS" in fb[0].reason


def test_selector_mismatch() -> None:
    a1, a2, b1, _ = basic()
    b2 = phase2(b1, "10.9.0.0/16", "10.1.0.0/16")
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 100)
    fb = p.events("b", NegotiationFailed)
    assert fb and fb[0].notify == "INVALID_ID_INFORMATION"
    assert p.events("a", NegotiationFailed)[0].notify == "INVALID_ID_INFORMATION"


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_wrong_psk(mode: str) -> None:
    a1, a2, _, _ = basic(mode=mode)
    b1 = phase1(B_IP, A_IP, mode=mode, psk=b"something else entirely")
    p = Pair(a1, [a2], policies_b(b1))
    p.run(until=p.now + 100)
    assert not p.established()[0] and not p.established()[1]
    failed = p.events("a", NegotiationFailed) + p.events("b", NegotiationFailed)
    assert any("pre-shared keys differ" in f.reason for f in failed), failed


def test_identity_mismatch() -> None:
    from ike.policy import Identity

    a1, a2, _, _ = basic()
    b1 = phase1(B_IP, A_IP, remote_id=Identity.parse("gw.example.org"))
    p = Pair(a1, [a2], policies_b(b1))
    p.run(until=p.now + 100)
    fb = p.events("b", NegotiationFailed)
    assert fb and "gw.example.org" in fb[0].reason and fb[0].notify == "INVALID_ID_INFORMATION"


def test_fqdn_identities_aggressive() -> None:
    from ike.policy import Identity

    ia, ib = Identity.parse("a.example.org"), Identity.parse("b@example.org")
    a1 = phase1(A_IP, B_IP, mode="aggressive", local_id=ia, remote_id=ib)
    b1 = phase1(B_IP, A_IP, mode="aggressive", local_id=ib, remote_id=ia)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16")
    p = Pair(a1, [a2], policies_b(b1, mirror(a2, b1)))
    p.run()
    ea, eb = p.established()
    assert ea[0].remote_id == ib and eb[0].remote_id == ia


def test_weak_algorithms_only_when_configured() -> None:
    weak = IkeProposal("3des-cbc", 192, "hmac-md5-96", "hmac-md5", 2)
    esp = EspProposal("3des-cbc", 192, "hmac-md5-96")
    a1, a2, b1, b2 = basic(proposals=(weak,), esp=(esp,), pfs=5)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca, cb = p.children()
    assert ca and ca[0].proposal == esp
    _check_child_keys(ca[0], cb[0])
    # a responder that did not configure them refuses
    a1, a2, _, _ = basic(proposals=(weak,))
    b1 = phase1(B_IP, A_IP)
    p = Pair(a1, [a2], policies_b(b1))
    p.run(until=p.now + 50)
    assert p.events("b", NegotiationFailed)


def test_lifetimes_shorter_responder_wins() -> None:
    a1, _, _, _ = basic(lifetime_s=28800)
    b1 = phase1(B_IP, A_IP, lifetime_s=3600, lifetime_kb=50000)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=7200, lifetime_kb=100000)
    b2 = mirror(phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=1800, lifetime_kb=20000), b1)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert ia[0].lifetime_s == ib[0].lifetime_s == 3600
    ca, cb = p.children()
    assert ca[0].lifetime_s == cb[0].lifetime_s == 1800
    assert ca[0].lifetime_kb == cb[0].lifetime_kb == 20000


def test_lifetimes_shorter_initiator_accepted() -> None:
    a1, _, b1, _ = basic()
    a1 = phase1(A_IP, B_IP, lifetime_s=600)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=300)
    b2 = mirror(phase2(a1, "10.1.0.0/16", "10.2.0.0/16", lifetime_s=3600), b1)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert ia[0].lifetime_s == ib[0].lifetime_s == 600
    ca, cb = p.children()
    assert ca[0].lifetime_s == cb[0].lifetime_s == 300


def test_ipv6() -> None:
    a_ip, b_ip = "2001:db8::1", "2001:db8::2"
    a1 = phase1(a_ip, b_ip)
    b1 = phase1(b_ip, a_ip)
    a2 = phase2(a1, "2001:db8:1::/48", "2001:db8:2::/48")
    from ike.proto.static_policies import StaticPolicies
    from ike.proto.v1 import Ikev1Engine

    a = Ikev1Engine.initiate(a1, [a2], StaticPolicies([a1]), EngineSettings(), (a_ip, 500), (b_ip, 500), 0.0)
    b = None
    for _ in range(20):
        for dg in a.datagrams_to_send():
            from ike.proto.api import Datagram

            rx = Datagram(dg.data, dg.remote, dg.local)
            if b is None:
                b = Ikev1Engine.respond(rx, StaticPolicies([b1], [mirror(a2, b1)]), EngineSettings(), 0.0)
            else:
                b.receive_datagram(rx, 0.0)
        if b is not None:
            for dg in b.datagrams_to_send():
                from ike.proto.api import Datagram

                a.receive_datagram(Datagram(dg.data, dg.remote, dg.local), 0.0)
    evs = []
    while (e := a.next_event()) is not None:
        evs.append(e)
    assert any(isinstance(e, IkeSaEstablished) for e in evs)
    kids = [e for e in evs if isinstance(e, ChildSaEstablished)]
    assert kids and str(kids[0].local_ts[0]) == "2001:db8:1::/48"


@pytest.mark.parametrize("pfs", [0, 14])
def test_encrypted_aggressive_mode_third_message_is_accepted(monkeypatch: pytest.MonkeyPatch, pfs: int) -> None:
    from ike.proto.v1.exchanges.aggressive_mode import AggressiveMode

    monkeypatch.setattr(AggressiveMode, "ENCRYPT_AM3", True)
    a1, a2, b1, b2 = basic(mode="aggressive", pfs=pfs)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    assert p.log[2][1].data[19] & 1  # AM3 went encrypted
    ca, cb = p.children()
    assert ca and cb and ca[0].inbound == cb[0].outbound


def test_commit_bit_and_connected_notify_are_accepted() -> None:
    """A peer that sets the commit bit in QM2 and follows QM3 with HDR*, HASH(4), N(CONNECTED)."""
    from ike.proto.api import Datagram, PacketDropped
    from ike.proto.v1.payloads import Exchange, NotifyPayload, NotifyType

    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca = p.children()[0]
    assert ca
    # b (responder) now sends the CONNECTED notify in the quick mode's message ID
    assert p.b is not None
    sa_b = next(iter(p.b._sas.values()))
    msgid = next(iter(sa_b.used_msgids))
    qm4 = sa_b.protected(Exchange.QUICK, msgid, [NotifyPayload(3, NotifyType.CONNECTED, ca[0].outbound.spi)])
    before = len(p.events("a", PacketDropped))
    p.a.receive_datagram(Datagram(qm4, (A_IP, 500), (B_IP, 500)), p.now)
    p.collect()
    assert len(p.events("a", PacketDropped)) == before
    assert p.a.is_established() and len(p.children()[0]) == 1


def test_draft_nat_t_peer() -> None:
    """A peer that only knows draft NAT-T: NAT-D payload type 130 and encapsulation 61443."""
    from ike.proto.v1 import natt
    from ike.proto.v1.isakmp_sa import IsakmpSa

    a1, a2, b1, b2 = basic()
    seen: list[int] = []

    def draft_only() -> list[bytes]:
        return [natt.VID_NATT_DRAFT02N, natt.VID_DPD]

    import unittest.mock as um

    with um.patch.object(natt, "our_vendor_ids", draft_only):
        p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(extra={"force_udp_encap": True}))
        p.run()
    ia, ib = p.established()
    assert ia and ib
    ca, cb = p.children()
    assert ca[0].udp_encap and cb[0].udp_encap
    sa_a: IsakmpSa = next(iter(p.a._sas.values()))
    assert sa_a.natt == natt.NATT_DRAFT
    for _, dg in p.log[2:4]:  # MM3 / MM4 carry draft NAT-D payloads
        from ike.proto.v1.payloads import decode_chain

        seen += [d.type for d in decode_chain(dg.data[16], dg.data[28:])]
    assert 130 in seen and 20 not in seen


def test_ah_transport() -> None:
    a1, _, b1, _ = basic()
    esp = (EspProposal("aes-cbc", 128, "hmac-sha2-256-128"),)
    a2 = phase2(a1, A_IP, B_IP, protocol="ah", mode="transport", proposals=esp)
    p = Pair(a1, [a2], policies_b(b1, mirror(a2, b1)))
    p.run()
    ca, cb = p.children()
    assert ca and cb and ca[0].protocol == "ah" == cb[0].protocol and ca[0].mode == "transport"
    assert ca[0].inbound.enc_key == b"" and len(ca[0].inbound.integ_key) == 32
    assert ca[0].inbound == cb[0].outbound
