"""Initiator and responder engines against each other in memory, with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from ike.policy import DpdAction, EspProposal, IkeProposal
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
from ike.proto.static_policies import StaticPolicies
from ike.proto.transforms import ENCR, INTEG
from ike.proto.v2 import CookieGuard
from ike.proto.v2.payloads.header import IKE_SA_INIT, IkeHeader

from . import lifecycle
from .harness import NAT_IP, Net, mirror1, mirror2, phase1, phase2
from .lifecycle import child_pair, established


def pair(p1=None, p2s=None, r_p1=None, r_p2s=None, **kw) -> Net:  # type: ignore[no-untyped-def]
    p1 = p1 or phase1()
    p2s = p2s if p2s is not None else [phase2()]
    r_p1 = r_p1 or mirror1(p1)
    r_p2s = r_p2s if r_p2s is not None else [mirror2(p) for p in p2s]
    return Net(p1, p2s, StaticPolicies([p1], p2s), StaticPolicies([r_p1], r_p2s), **kw)


def psk_net(
    *, p1: dict[str, Any] | None = None, p2s: list[dict[str, Any]] | None = None, drop: lifecycle.Drop | None = None
) -> Net:
    """The lifecycle scenarios' factory (lifecycle.MakeNet) with a pre-shared key."""
    return pair(phase1(**(p1 or {})), [phase2(**kw) for kw in (p2s or [{}])], drop=drop)


def key_lens(p: EspProposal) -> tuple[int, int]:
    e = ENCR[p.encr]
    return e.key_material_len(p.encr_keylen), INTEG[p.integ].key_len if p.integ else 0


IKE_PROPOSALS = [
    IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14),
    IkeProposal("aes-cbc", 192, "hmac-sha2-256-128", "hmac-sha2-256", 15),
    IkeProposal("aes-cbc", 256, "hmac-sha2-384-192", "hmac-sha2-384", 19),
    IkeProposal("aes-cbc", 256, "hmac-sha2-512-256", "hmac-sha2-512", 20),
    IkeProposal("aes-gcm-16", 128, None, "hmac-sha2-256", 21),
    IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-384", 31),
    IkeProposal("chacha20-poly1305", 256, None, "hmac-sha2-256", 32),
    IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-512", 16),
    IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 2),  # weak, explicitly configured
]


@pytest.mark.parametrize("prop", IKE_PROPOSALS, ids=str)
def test_ike_transforms(prop: IkeProposal) -> None:
    net = pair(phase1(proposals=(prop,)))
    net.pump()
    ei, er = established(net)
    assert ei.proposal == er.proposal == prop
    assert ei.spi_i == er.spi_i and ei.spi_r == er.spi_r
    child_pair(net)
    # And the IKE SA carries further exchanges (encryption in both directions).
    assert net.i.engine is not None
    net.i.engine.start_child(phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24"), net.now)
    net.r_policies.add(mirror2(phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24")))
    net.pump()
    assert len(net.i.of(ChildSaEstablished)) == 2


ESP_PROPOSALS = [
    EspProposal("aes-cbc", 128, "hmac-sha1-96"),
    EspProposal("aes-cbc", 192, "hmac-sha2-256-128", esn=True),
    EspProposal("aes-cbc", 256, "hmac-sha2-384-192"),
    EspProposal("aes-cbc", 256, "hmac-sha2-512-256", esn=True),
    EspProposal("aes-gcm-16", 128, None),
    EspProposal("aes-gcm-16", 256, None, esn=True),
    EspProposal("chacha20-poly1305", 256, None),
]


@pytest.mark.parametrize("prop", ESP_PROPOSALS, ids=str)
def test_esp_transforms(prop: EspProposal) -> None:
    net = pair(p2s=[phase2(proposals=(prop,))])
    net.pump()
    a, b = child_pair(net)
    assert a.proposal == b.proposal == prop
    el, il = key_lens(prop)
    assert len(a.inbound.enc_key) == el and len(a.inbound.integ_key) == il
    assert a.inbound.enc_key != a.outbound.enc_key


def test_weak_transform_only_when_the_definition_names_it() -> None:
    """MODP-1024 (group 2) offered first by a peer is not taken by a responder whose definition does
    not name it, and a peer offering nothing else gets NO_PROPOSAL_CHOSEN (transforms.weak)."""
    weak = IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 2)
    strong = IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 14)
    p1 = phase1(proposals=(weak, strong))
    net = pair(p1, r_p1=mirror1(p1, policy=phase1(proposals=(strong,)).policy))
    net.pump()
    ei, er = established(net)
    assert ei.proposal == er.proposal == strong
    p1 = phase1(proposals=(weak,))
    net = pair(p1, r_p1=mirror1(p1, policy=phase1(proposals=(strong,)).policy))
    net.pump()
    assert not net.i.of(IkeSaEstablished)
    fr = net.r.of(NegotiationFailed)
    assert fr and fr[0].notify == "NO_PROPOSAL_CHOSEN" and "/dh2" in " ".join(fr[0].peer_offered)


def test_responder_chooses_by_its_own_order() -> None:
    a = IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 31)
    b = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31)
    ea, eb = EspProposal("aes-cbc", 128, "hmac-sha2-256-128"), EspProposal("aes-gcm-16", 256, None)
    p1 = phase1(proposals=(a, b))
    p2 = phase2(proposals=(ea, eb))
    net = pair(
        p1,
        [p2],
        mirror1(p1, policy=phase1(proposals=(b, a)).policy),
        [mirror2(p2, policy=phase2(proposals=(eb, ea)).policy)],
    )
    net.pump()
    ei, er = established(net)
    assert ei.proposal == er.proposal == b
    assert child_pair(net)[0].proposal == eb


def test_invalid_ke_retry_with_requested_group() -> None:
    g31 = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31)
    g19 = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 19)
    p1 = phase1(proposals=(g31, g19))
    net = pair(p1, r_p1=mirror1(p1, policy=phase1(proposals=(g19,)).policy))
    net.pump()
    ei, _ = established(net)
    assert ei.proposal.dh == 19
    inits = [IkeHeader.decode(d.data) for s, d in net.wire if s == "i" and d.data[18] == IKE_SA_INIT]
    assert len(inits) == 2 and all(h.msg_id == 0 for h in inits)


def test_no_proposal_chosen_reports_both_sides() -> None:
    p1 = phase1(proposals=(IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14),))
    r = mirror1(p1, policy=phase1(proposals=(IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31),)).policy)
    net = pair(p1, r_p1=r)
    net.pump()
    fi, fr = net.i.of(NegotiationFailed), net.r.of(NegotiationFailed)
    assert fi and fr
    assert fr[0].notify == "NO_PROPOSAL_CHOSEN" and fi[0].notify == "NO_PROPOSAL_CHOSEN"
    assert "aes-gcm-16-256" in " ".join(fr[0].offered) and "aes-cbc-128" in " ".join(fr[0].peer_offered)
    assert "aes-cbc-128" in " ".join(fi[0].offered)
    assert not net.i.of(IkeSaEstablished)
    assert net.i.engine is not None and not net.i.engine.is_established()
    assert net.i.of(SpiAdded)[0].spi == net.i.of(SpiRemoved)[0].spi


def test_wrong_psk_fails_both_sides() -> None:
    p1 = phase1()
    net = pair(p1, r_p1=mirror1(p1, credentials=phase1(psk=b"other").credentials))
    net.pump()
    fi, fr = net.i.of(NegotiationFailed), net.r.of(NegotiationFailed)
    assert fr and "pre-shared key" in fr[0].reason and fr[0].notify == "AUTHENTICATION_FAILED"
    assert fi and fi[0].notify == "AUTHENTICATION_FAILED"
    assert not net.i.of(IkeSaEstablished) and not net.r.of(IkeSaEstablished)


def test_identity_mismatch_reports_offered_and_received() -> None:
    p1 = phase1(remote_id="gw.example")
    net = pair(p1, r_p1=mirror1(p1, local_id=phase1(local_id="other.example").local_id))
    net.pump()
    f = net.i.of(NegotiationFailed)
    assert f and "gw.example" in f[0].offered[0] and "other.example" in f[0].peer_offered[0]
    # The responder had the SA up; it is told and closes it.
    assert net.r.of(IkeSaEstablished) and net.r.of(IkeSaDeleted)
    assert "AUTHENTICATION_FAILED" in net.r.of(IkeSaDeleted)[0].reason


def test_unknown_identity_at_responder() -> None:
    p1 = phase1(local_id="stranger@example")
    net = pair(p1, r_p1=mirror1(phase1()))
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "stranger@example" in f[0].peer_offered[0] and f[0].offered
    assert net.i.of(NegotiationFailed)[0].notify == "AUTHENTICATION_FAILED"


def test_ts_mismatch_fails_child_only() -> None:
    p2 = phase2()
    net = pair(p2s=[p2], r_p2s=[mirror2(phase2(local="198.18.30.0/24", remote="198.18.40.0/24"))])
    net.pump()
    established(net)
    assert not net.i.of(ChildSaEstablished)
    fi, fr = net.i.of(NegotiationFailed), net.r.of(NegotiationFailed)
    assert fi[0].phase == 2 and fi[0].notify == "TS_UNACCEPTABLE"
    assert fr[0].phase == 2 and "198.18.10.0/24" in " ".join(fr[0].peer_offered)
    assert "198.18.10.0/24" in " ".join(fi[0].offered)


def test_narrowing() -> None:
    p2 = phase2(local="198.18.0.0/16", remote="198.18.0.0/15")
    r2 = mirror2(phase2(local="198.18.10.0/24", remote="198.18.20.0/24"))
    net = pair(p2s=[p2], r_p2s=[r2])
    net.pump()
    a, b = child_pair(net)
    assert [str(t) for t in a.local_ts] == ["198.18.10.0/24"] and [str(t) for t in a.remote_ts] == ["198.18.20.0/24"]
    assert b.local_ts == a.remote_ts and b.remote_ts == a.local_ts


def test_transport_mode() -> None:
    p2 = phase2(local="198.18.0.1/32", remote="198.18.0.2/32", mode="transport")
    net = pair(p2s=[p2])
    net.pump()
    a, b = child_pair(net)
    assert a.mode == b.mode == "transport"


def test_transport_refused_by_tunnel_only_responder_is_reported() -> None:
    p2 = phase2(mode="transport")
    net = pair(p2s=[p2], r_p2s=[mirror2(phase2())])
    net.pump()
    established(net)
    assert not net.i.of(ChildSaEstablished)
    assert "transport" in net.i.of(NegotiationFailed)[0].reason


def test_nat_detected_moves_to_4500() -> None:
    p1 = phase1()
    net = pair(p1, r_p1=mirror1(p1, remote_addr="0.0.0.0"), nat=True)
    net.pump()
    ei, er = established(net)
    assert ei.nat_local and not ei.nat_remote and er.nat_remote and not er.nat_local
    assert ei.local[1] == 4500 and ei.remote[1] == 4500
    assert er.remote == (NAT_IP, 14500) and er.local[1] == 4500
    a, b = child_pair(net)
    assert a.udp_encap and b.udp_encap
    assert b.remote == (NAT_IP, 14500)


def test_forced_encapsulation_like_strongswan_libipsec() -> None:
    s = EngineSettings(extra={"force_udp_encap": True, "ikev2_cookie_guard": CookieGuard()})
    net = pair(settings=s, r_settings=EngineSettings(extra={"ikev2_cookie_guard": CookieGuard()}))
    net.pump()
    ei, er = established(net)
    assert er.nat_remote and ei.local[1] == 4500
    assert all(c.udp_encap for c in net.i.of(ChildSaEstablished) + net.r.of(ChildSaEstablished))


def test_multiple_children_and_create_child() -> None:
    extra = [phase2(n, local=f"198.18.1{n}.0/24", remote=f"198.18.2{n}.0/24", name=f"c{n}") for n in (2, 3)]
    pfs = phase2(4, local="198.18.14.0/24", remote="198.18.24.0/24", pfs_group=19, name="pfs")
    net = pair(p2s=[phase2(), *extra])
    net.r_policies.add(mirror2(pfs))
    net.pump()
    assert len(net.i.of(ChildSaEstablished)) == 3 and len(net.r.of(ChildSaEstablished)) == 3
    assert net.i.engine is not None
    net.i.engine.start_child(pfs, net.now)
    net.pump()
    a, b = child_pair(net)
    assert a.pfs_group == b.pfs_group == 19 and a.phase2.name == "pfs"
    assert len({c.inbound.spi for c in net.i.of(ChildSaEstablished)}) == 4


def test_responder_starts_child_too() -> None:
    net = pair()
    net.pump()
    extra = phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24")
    net.r_policies.add(mirror2(extra))
    assert net.r.engine is not None
    net.r.engine.start_child(mirror2(extra), net.now)
    net.pump()
    # The initiator has no definition for it yet: reported as a selector failure on both sides.
    assert len(net.r.of(ChildSaEstablished)) == 1 and len(net.i.of(ChildSaEstablished)) == 1
    assert net.i.of(NegotiationFailed)[0].notify == "TS_UNACCEPTABLE"
    assert net.r.of(NegotiationFailed)[0].notify == "TS_UNACCEPTABLE"
    assert net.i.engine is not None
    net.i.engine.policies.add(extra)  # type: ignore[attr-defined]
    net.r.engine.start_child(mirror2(extra), net.now)
    net.pump()
    assert len(net.r.of(ChildSaEstablished)) == 2 and len(net.i.of(ChildSaEstablished)) == 2
    child_pair(net)


def test_delete_child_both_directions() -> None:
    net = pair(p2s=[phase2(), phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24")])
    net.pump()
    c1, c2 = net.i.of(ChildSaEstablished)
    r1, r2 = net.r.of(ChildSaEstablished)
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.delete_child(c1.child_id, net.now)
    net.pump()
    assert [e.child_id for e in net.i.of(ChildSaDeleted)] == [c1.child_id]
    assert [e.child_id for e in net.r.of(ChildSaDeleted)] == [r1.child_id]
    assert net.r.of(ChildSaDeleted)[0].reason == "deleted by peer"
    net.r.engine.delete_child(r2.child_id, net.now)
    net.pump()
    assert net.i.of(ChildSaDeleted)[-1].child_id == c2.child_id
    assert net.i.engine.is_established()


def test_delete_ike_takes_children() -> None:
    lifecycle.delete_ike_takes_children(psk_net)


def test_retransmission_backoff_and_give_up() -> None:
    s = EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=3, extra={"ikev2_cookie_guard": CookieGuard()})
    net = pair(settings=s, drop=lambda n, dg: True)
    start = net.now
    times: list[float] = []
    for _ in range(10):
        t = net.next_timer()
        if t is None:
            break
        net.now = t
        assert net.i.engine is not None
        net.i.engine.handle_timer(t)
        if net.i.engine.datagrams_to_send():
            times.append(t - start)
        net._collect()
    assert times == [1.0, 3.0, 7.0]  # 1, 2, 4 s apart
    f = net.i.of(NegotiationFailed)
    assert f and "did not answer" in f[0].reason and "3 retransmissions" in f[0].reason


def test_retransmitted_request_answered_from_cache() -> None:
    lifecycle.retransmitted_request_answered_from_cache(psk_net)


def test_every_other_datagram_lost() -> None:
    lifecycle.every_other_datagram_lost(psk_net)


def test_dpd_clear_when_peer_goes_silent() -> None:
    lifecycle.dpd_clear_when_peer_goes_silent(psk_net)


def test_dpd_keeps_sa_alive_when_peer_answers() -> None:
    lifecycle.dpd_keeps_sa_alive_when_peer_answers(psk_net)


@pytest.mark.parametrize("action", [DpdAction.RESTART, DpdAction.HOLD, DpdAction.CLEAR])
def test_dpd_loss_is_reported_not_restarted(action: DpdAction) -> None:
    """Restarting is the daemon's (it retries with back-off): the engine reports the loss with the
    tunnel's DPD action and initiates nothing by itself."""
    silent = [False]
    net = pair(phase1(dpd_delay_s=10, dpd_action=action), drop=lambda n, dg: silent[0])
    net.pump()
    silent[0] = True
    net.run(100)
    assert [(e.reason, e.dpd_action) for e in net.i.of(IkeSaDeleted)] == [("peer unreachable (DPD)", action.value)]
    assert [e.reason for e in net.i.of(ChildSaDeleted)] == ["IKE SA closed: peer unreachable (DPD)"]
    silent[0] = False
    net.run(200)
    assert len(net.i.of(IkeSaEstablished)) == 1 and len(net.i.of(ChildSaEstablished)) == 1
    assert net.i.engine is not None and net.i.engine.get_timer() is None


@pytest.mark.parametrize("pfs", [0, 31, 14])
def test_child_rekey(pfs: int) -> None:
    lifecycle.child_rekey(psk_net, pfs)


def test_child_rekey_by_responder() -> None:
    net = pair()
    net.pump()
    old_i, old_r = child_pair(net)
    assert net.r.engine is not None
    net.r.engine.rekey_child(old_r.child_id, net.now)
    net.pump()
    _new_i, new_r = child_pair(net)
    assert new_r.rekey_of == old_r.child_id
    assert net.i.of(ChildSaDeleted)[0].child_id == old_i.child_id


def test_simultaneous_child_rekey() -> None:
    net = pair()
    net.pump()
    old_i, old_r = child_pair(net)
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.rekey_child(old_i.child_id, net.now)
    net.r.engine.rekey_child(old_r.child_id, net.now)
    net.run(30)
    # Exactly one successor survives, the same pair on both sides; everything else is deleted.
    live_i = {c.spi_in for c in net.i.engine.child_sas()}
    live_r = {c.spi_in for c in net.r.engine.child_sas()}
    assert len(live_i) == 1 and len(live_r) == 1
    ci = net.i.engine.child_sas()[0]
    cr = net.r.engine.child_sas()[0]
    assert ci.spi_out == cr.spi_in and cr.spi_out == ci.spi_in
    assert old_i.child_id in [e.child_id for e in net.i.of(ChildSaDeleted)]
    assert any("redundant" in e.reason for e in net.i.of(ChildSaDeleted) + net.r.of(ChildSaDeleted))


def test_ike_rekey_moves_children() -> None:
    lifecycle.ike_rekey_moves_children(psk_net)


def test_ike_rekey_by_responder() -> None:
    net = pair()
    net.pump()
    assert net.r.engine is not None
    net.r.engine.rekey_ike(net.now)
    net.pump()
    ni, nr = established(net)
    assert nr.rekey_of is not None and nr.role.value == "i" and ni.role.value == "r"
    net.run(40)
    assert not net.i.of(NegotiationFailed)


def test_simultaneous_ike_rekey() -> None:
    net = pair()
    net.pump()
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.rekey_ike(net.now)
    net.r.engine.rekey_ike(net.now)
    net.run(30)
    si, sr = net.i.engine.sa, net.r.engine.sa
    assert si is not None and sr is not None
    assert (si.spi_i, si.spi_r) == (sr.spi_i, sr.spi_r)
    assert len(si.children) == 1 and len(sr.children) == 1
    assert len([s for s in net.i.engine._sas.values()]) == 1
    assert len([s for s in net.r.engine._sas.values()]) == 1
    # still usable
    net.i.engine.rekey_child(next(iter(si.children)), net.now)
    net.pump()
    assert len(net.i.engine.child_sas()) == 1 and len(net.r.engine.child_sas()) == 1


def test_lifetimes_drive_rekeys() -> None:
    net = pair(phase1(lifetime_s=1000, dpd_delay_s=0), p2s=[phase2(lifetime_s=300)])
    net.run(2000)
    assert len(net.i.of(IkeSaEstablished)) >= 2
    assert len(net.i.of(ChildSaEstablished)) >= 6
    assert net.i.engine is not None and net.i.engine.is_established()
    assert len(net.i.engine.child_sas()) == 1 and len(net.r.engine.child_sas()) == 1  # type: ignore[union-attr]
    assert not net.i.of(NegotiationFailed) and not net.r.of(NegotiationFailed)


def test_cookie_above_half_open_threshold() -> None:
    s = EngineSettings(half_open_cookie_threshold=0, extra={"ikev2_cookie_guard": CookieGuard()})
    net = pair(settings=s)
    net.pump()
    established(net)
    inits = [IkeHeader.decode(d.data) for s_, d in net.wire if s_ == "i" and d.data[18] == IKE_SA_INIT]
    assert len(inits) == 2


def test_half_open_counted_and_expires() -> None:
    guard = CookieGuard()
    s = EngineSettings(extra={"ikev2_cookie_guard": guard})
    net = pair(settings=s, drop=lambda n, dg: n > 1)  # only the first IKE_SA_INIT arrives
    net.pump()
    assert guard.half_open == 1
    net.run(100)
    assert guard.half_open == 0
    assert any("half-open" in e.reason for e in net.r.of(NegotiationFailed))


def test_fragmentation() -> None:
    s = EngineSettings(fragment_size=300, extra={"ikev2_cookie_guard": CookieGuard()})
    net = pair(p2s=[phase2(proposals=tuple(ESP_PROPOSALS))], settings=s)
    net.pump()
    established(net)
    assert net.i.engine is not None and net.r.engine is not None
    assert net.i.engine.stats["fragmented"] >= 1 and net.r.engine.stats["reassembled"] >= 1
    assert all(len(d.data) <= 300 for _, d in net.wire)


def test_fragments_under_loss() -> None:
    s = EngineSettings(fragment_size=300, extra={"ikev2_cookie_guard": CookieGuard()})
    net = pair(p2s=[phase2(proposals=tuple(ESP_PROPOSALS))], settings=s, drop=lambda n, dg: n % 3 == 0)
    net.run(120)
    established(net)
    child_pair(net)


def test_ipv6_outer_and_inner() -> None:
    p1 = phase1(local_id="2001:db8::1", remote_id="2001:db8::2", local_addr="198.18.0.1", remote_addr="198.18.0.2")
    p2 = phase2(local="2001:db8:10::/64", remote="2001:db8:20::/64")
    net = pair(p1, [p2])
    net.pump()
    a, _ = child_pair(net)
    assert str(a.local_ts[0]) == "2001:db8:10::/64"


def test_ipv6_outer_addresses() -> None:
    p1 = phase1(local_id="2001:db8::1", remote_id="2001:db8::2", local_addr="2001:db8::1", remote_addr="2001:db8::2")
    s = EngineSettings(fragment_size=400, extra={"ikev2_cookie_guard": CookieGuard()})
    net = pair(p1, [phase2(proposals=tuple(ESP_PROPOSALS))], settings=s, addresses=("2001:db8::1", "2001:db8::2"))
    net.pump()
    ei, er = established(net)
    assert ei.remote == ("2001:db8::2", 500) and er.remote == ("2001:db8::1", 500)
    assert not ei.nat_local and not er.nat_remote
    assert all(len(d.data) <= 400 - 48 for _, d in net.wire)
    child_pair(net)


def test_ah_child() -> None:
    p2 = phase2(protocol="ah", proposals=(EspProposal("aes-cbc", 128, "hmac-sha2-256-128"),))
    net = pair(p2s=[p2])
    net.pump()
    a, b = child_pair(net)
    assert a.protocol == b.protocol == "ah"
    assert a.inbound.enc_key == b"" and len(a.inbound.integ_key) == 32
    assert net.i.engine is not None
    net.i.engine.rekey_child(a.child_id, net.now)
    net.pump()
    assert child_pair(net)[0].rekey_of == a.child_id
    assert net.r.of(ChildSaDeleted)[0].child_id == b.child_id


def test_ike_auth_child_proposal_with_dh_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some initiators put their PFS group into the IKE_AUTH child proposal; it is ignored there."""
    from ike.proto.v2.exchanges import child_create

    orig = child_create.ChildOffer.make

    def with_dh(eng, phase2, pfs_group, with_nonce, *a, **kw):  # type: ignore[no-untyped-def]
        offer = orig(eng, phase2, pfs_group, with_nonce, *a, **kw)
        offer.pfs_group = offer.pfs_group or 31  # what goes into the SA payload
        return offer

    monkeypatch.setattr(child_create.ChildOffer, "make", with_dh)
    net = pair()
    net.pump()
    (b,) = net.r.of(ChildSaEstablished)  # (our own initiator, patched, then expects a DH answer)
    assert b.pfs_group == 0
    assert not net.r.of(NegotiationFailed)


def test_cookie_secret_rotation() -> None:
    g = CookieGuard(lifetime=100)
    ni, spi = b"n" * 32, b"s" * 8
    c = g.make(ni, "198.18.0.1", spi, 1000.0)
    assert g.check(c, ni, "198.18.0.1", spi, 1050.0)
    assert not g.check(c, ni, "198.18.0.9", spi, 1050.0)
    assert not g.check(c[:-1] + bytes([c[-1] ^ 1]), ni, "198.18.0.1", spi, 1050.0)
    assert g.check(c, ni, "198.18.0.1", spi, 1150.0)  # one rotation: the previous secret still works
    assert not g.check(c, ni, "198.18.0.1", spi, 1300.0)  # two rotations: expired


def test_stop_refreshing_lets_children_run_to_expiry() -> None:
    """AIX phase 1 removal: after stop_refreshing() the child is not rekeyed; it is deleted when
    its lifetime ends, not at its rekey time, and nothing is rekeyed in between."""
    net = pair(p2s=[phase2(lifetime_s=100)], p1=phase1(lifetime_s=1000, dpd_delay_s=0))
    net.pump()
    start = net.now
    child_pair(net)
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.stop_refreshing(net.now)
    net.r.engine.stop_refreshing(net.now)
    net.run(99)
    assert not net.i.of(ChildSaDeleted) and len(net.i.of(ChildSaEstablished)) == 1
    net.run(5)
    deleted = net.i.of(ChildSaDeleted) + net.r.of(ChildSaDeleted)
    assert deleted and {d.reason for d in deleted} <= {"expired", "deleted by peer"}, deleted
    assert net.now - start >= 100
    assert len(net.i.of(ChildSaEstablished)) == 1  # never refreshed


def test_after_stop_refreshing_the_peers_child_rekeys_are_refused_and_its_ike_rekey_taken() -> None:
    """Only our side stopped refreshing (the peer knows nothing of the AIX phase 1 removal): its
    child rekey gets NO_ADDITIONAL_SAS and its old child runs on to expiry; its IKE SA rekey is
    taken, so the IKE SA outlives its own lifetime and carries the child that far."""
    net = pair(p2s=[phase2(lifetime_s=100)], p1=phase1(lifetime_s=60, dpd_delay_s=0))
    net.pump()
    start = net.now
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.stop_refreshing(net.now)  # the peer (responder) keeps refreshing
    net.run(99)
    refused = [f for f in net.r.of(NegotiationFailed) if f.notify == "NO_ADDITIONAL_SAS"]
    assert refused and all(f.rekey_of is not None for f in refused), net.r.of(NegotiationFailed)
    assert not net.i.of(ChildSaDeleted) and len(net.i.of(ChildSaEstablished)) == 1
    assert net.i.of(IkeSaEstablished)[-1].rekey_of is not None  # the peer's IKE rekey went through
    net.run(5)
    assert net.i.of(ChildSaDeleted) and net.now - start >= 100
    assert len(net.i.of(ChildSaEstablished)) == 1  # never refreshed


def test_without_stop_refreshing_the_child_is_rekeyed_before_expiry() -> None:
    """The control case for the test above: the same lifetimes do rekey when refreshing is on."""
    net = pair(p2s=[phase2(lifetime_s=100)], p1=phase1(lifetime_s=1000, dpd_delay_s=0))
    net.pump()
    net.run(99)
    assert len(net.i.of(ChildSaEstablished)) >= 2 or len(net.r.of(ChildSaEstablished)) >= 2
