"""Every message the engines build parses with scapy's IKEv2 layer (scapy.contrib.ikev2) to the same
fields our codec reads. SK payloads are opened by `wire.sk_open`, written against the RFCs with
`cryptography` directly and sharing no code with ike.proto.v2.payloads.sk."""

from __future__ import annotations

import hashlib
import ipaddress
import struct

import pytest
from scapy.contrib import ikev2 as s
from scapy.packet import NoPayload

from ike.policy import EspProposal, IkeProposal
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2.keys import IkeKeys
from ike.proto.v2.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsPayload,
    decode_chain,
    decode_outer,
)
from ike.proto.v2.payloads.base import RawBody

from .harness import Net, mirror1, mirror2, phase1, phase2
from .wire import sk_open


def scapy_chain(first: int, data: bytes) -> list:  # type: ignore[type-arg]
    """scapy's view of a payload chain: parse it behind a dummy IKEv2 header."""
    hdr = bytes(16) + bytes([first, 0x20, 37, 0]) + struct.pack("!II", 0, 28 + len(data))
    pkt = s.IKEv2(hdr + data)
    out = []
    p = pkt.payload
    while p is not None and not isinstance(p, NoPayload) and p.name != "Raw":
        out.append(p)
        p = p.payload if p.payload else None
    return out


def linked(first, cls) -> list:  # type: ignore[no-untyped-def, type-arg]
    """scapy nests proposals and transforms as a chain of payloads, or gives a list."""
    items = first if isinstance(first, list) else [first]
    out = []
    for x in items:
        while isinstance(x, cls):
            out.append(x)
            x = x.payload
    return out


def compare(ours: list[Payload], theirs: list) -> None:  # type: ignore[type-arg]
    assert len(ours) == len(theirs), (ours, [t.name for t in theirs])
    for o, t in zip(ours, theirs, strict=True):
        if isinstance(o, SaPayload):
            assert isinstance(t, s.IKEv2_SA)
            props = linked(t.prop, s.IKEv2_Proposal)
            assert len(props) == len(o.proposals)
            for op, tp in zip(o.proposals, props, strict=True):
                assert (op.number, op.protocol, op.spi) == (tp.proposal, tp.proto, bytes(tp.SPI or b""))
                trans = linked(tp.trans, s.IKEv2_Transform)
                assert [(x.type, x.id) for x in op.transforms] == [(x.transform_type, x.transform_id) for x in trans]
                assert [x.keylen for x in op.transforms] == [getattr(x, "key_length", None) for x in trans]
        elif isinstance(o, KePayload):
            assert isinstance(t, s.IKEv2_KE) and (t.group, bytes(t.ke)) == (o.group, o.data)
        elif isinstance(o, NoncePayload):
            assert isinstance(t, s.IKEv2_Nonce) and bytes(t.nonce) == o.data
        elif isinstance(o, NotifyPayload):
            assert isinstance(t, s.IKEv2_Notify)
            assert (t.type, t.proto, bytes(t.SPI or b"")) == (o.notify_type, o.protocol, o.spi)
            assert bytes(t.notify or b"") == o.data
        elif isinstance(o, IdPayload):
            assert isinstance(t, s.IKEv2_IDi | s.IKEv2_IDr)
            raw = t.ID if isinstance(t.ID, bytes) else ipaddress.ip_address(t.ID).packed
            assert (t.IDtype, raw) == (o.id_type, o.data)
        elif isinstance(o, AuthPayload):
            assert isinstance(t, s.IKEv2_AUTH) and (t.auth_type, bytes(t.load)) == (o.method, o.data)
        elif isinstance(o, TsPayload):
            assert isinstance(t, s.IKEv2_TSi | s.IKEv2_TSr) and t.number_of_TSs == len(o.selectors)
            for ts, sel in zip(t.traffic_selector, o.selectors, strict=True):
                start = getattr(ts, "starting_address_v4", None) or ts.starting_address_v6
                end = getattr(ts, "ending_address_v4", None) or ts.ending_address_v6
                assert ipaddress.ip_address(start) == sel.start and ipaddress.ip_address(end) == sel.end
                assert (ts.IP_protocol_ID, ts.start_port, ts.end_port) == (sel.protocol, sel.port_start, sel.port_end)
        elif isinstance(o, DeletePayload):
            assert isinstance(t, s.IKEv2_Delete) and (t.proto, t.SPInum) == (o.protocol, len(o.spis))
            if o.spis:
                assert [bytes(x) if isinstance(x, bytes) else struct.pack("!I", x) for x in t.SPI] == o.spis
        elif isinstance(o, CertPayload):
            assert isinstance(t, s.IKEv2_CERT) and (t.cert_encoding, bytes(t.cert_data)) == (o.encoding, o.data)
        elif isinstance(o, CertReqPayload):
            assert isinstance(t, s.IKEv2_CERTREQ) and t.cert_encoding == o.encoding
        else:
            raise AssertionError(f"payload {o} not covered")


def check_wire(net: Net, keys: dict[bytes, tuple[IkeKeys, IkeProposal]]) -> set[int]:
    exchanges = set()
    fragments: dict[tuple[object, ...], dict[int, tuple[int, bytes]]] = {}
    for _side, dg in net.wire:
        pkt = s.IKEv2(dg.data)
        h, outer = decode_outer(dg.data)
        assert (bytes(pkt.init_SPI), bytes(pkt.resp_SPI), pkt.exch_type, int(pkt.flags), pkt.id, pkt.length) == (
            h.spi_i,
            h.spi_r,
            h.exchange,
            h.flags,
            h.msg_id,
            len(dg.data),
        )
        exchanges.add(h.exchange)
        if h.exchange == 34:
            compare(outer, scapy_chain(h.next_payload, dg.data[28:]))
            continue
        assert isinstance(outer[0], RawBody)
        k, prop = keys[h.spi_i]
        from_i = bool(h.flags & 0x08)
        ek, ak = (k.sk_ei, k.sk_ai) if from_i else (k.sk_er, k.sk_ar)
        first, inner = sk_open(dg.data, prop.encr, ek, prop.integ, ak)
        if h.next_payload == 46:
            assert isinstance(pkt.payload, s.IKEv2_Encrypted)
            compare(decode_chain(first, inner), scapy_chain(first, inner))
            continue
        frag = pkt.payload
        assert isinstance(frag, s.IKEv2_Encrypted_Fragment)
        assert (frag.frag_number, frag.frag_total) == struct.unpack_from("!HH", dg.data, 32)
        key = (_side, h.spi_i, h.msg_id, bool(h.flags & 0x20))
        parts = fragments.setdefault(key, {})
        parts[frag.frag_number] = (first, inner)
        if len(parts) == frag.frag_total:
            whole = b"".join(parts[i][1] for i in range(1, frag.frag_total + 1))
            head = parts[1][0]
            compare(decode_chain(head, whole), scapy_chain(head, whole))
            exchanges.add(-1)  # a reassembled message was checked
    return exchanges


SCENARIOS = {
    "gcm": (IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31), EspProposal("aes-gcm-16", 128, None)),
    "cbc": (
        IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 19),
        EspProposal("aes-cbc", 256, "hmac-sha1-96", esn=True),
    ),
    "chacha": (
        IkeProposal("chacha20-poly1305", 256, None, "hmac-sha2-256", 14),
        EspProposal("chacha20-poly1305", 256, None),
    ),
    "cbc-sha384": (
        IkeProposal("aes-cbc", 192, "hmac-sha2-384-192", "hmac-sha2-384", 20),
        EspProposal("aes-cbc", 192, "hmac-sha2-384-192"),
    ),
    "cbc-sha512": (
        IkeProposal("aes-cbc", 256, "hmac-sha2-512-256", "hmac-sha2-512", 21),
        EspProposal("aes-cbc", 128, "hmac-sha2-512-256"),
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_all_messages_parse_with_scapy(name: str) -> None:
    ike, esp = SCENARIOS[name]
    p1 = phase1(proposals=(ike,), dpd_delay_s=10)
    p2 = phase2(proposals=(esp,), pfs_group=31)
    p2b = phase2(2, local="2001:db8:1::/64", remote="2001:db8:2::/64", proposals=(esp,), mode="transport")
    net = Net(p1, [p2], StaticPolicies([p1], [p2, p2b]), StaticPolicies([mirror1(p1)], [mirror2(p2), mirror2(p2b)]))
    keys: dict[bytes, tuple[IkeKeys, IkeProposal]] = {}

    def remember() -> None:
        for e in (net.i.engine, net.r.engine):
            assert e is not None
            for sa in e._sas.values():
                if sa.keys is not None and sa.proposal is not None and sa.spi_r != bytes(8):
                    keys[sa.spi_i] = (sa.keys, sa.proposal)

    net.pump()
    remember()
    i = net.i.engine
    assert i is not None
    i.start_child(p2b, net.now)  # CREATE_CHILD_SA with IPv6 selectors and transport mode
    net.pump()
    i.rekey_child(i.child_sas()[0].child_id, net.now)  # REKEY_SA, KE (PFS), Delete ESP
    net.run(25)  # liveness checks
    i.rekey_ike(net.now)  # IKE rekey and Delete IKE
    net.pump()
    remember()
    i.delete(net.now)
    net.pump()
    assert check_wire(net, keys) == {34, 35, 36, 37}


def test_nat_detection_hash_is_rfc_formula() -> None:
    p1, p2 = phase1(), phase2()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]))
    net.pump()
    first = net.wire[0][1]
    pkt = s.IKEv2(first.data)
    src = next(
        p for p in scapy_chain(pkt.next_payload, first.data[28:]) if isinstance(p, s.IKEv2_Notify) and p.type == 16388
    )
    expect = hashlib.sha1(
        bytes(pkt.init_SPI) + bytes(8) + ipaddress.ip_address(first.local[0]).packed + struct.pack("!H", first.local[1])
    ).digest()
    assert bytes(src.notify) == expect


def test_certificate_messages_parse_with_scapy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ike.policy import AuthMethod, Credentials
    from ike.proto.api import EngineSettings, IkeSaEstablished
    from ike.proto.v2 import CookieGuard

    from .certs_fixture import NOW_TS, make_pki

    pki = make_pki(tmp_path)
    hi, hr = pki.host("i", "ecdsa", dns="i.example"), pki.host("r", "ecdsa", dns="r.example")
    p1 = phase1(
        local_id="i.example",
        remote_id="r.example",
        auth=AuthMethod.ECDSA,
        psk=None,
        cert_file=hi.cert_file,
        key_file=hi.key_file,
        ca_file=pki.ca_file,
    )
    r1 = mirror1(p1, credentials=Credentials(cert_file=hr.cert_file, key_file=hr.key_file, ca_file=pki.ca_file))
    p2 = phase2()
    st = EngineSettings(extra={"wall_clock": lambda: NOW_TS, "ikev2_cookie_guard": CookieGuard()})
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([r1], [mirror2(p2)]), settings=st, r_settings=st)
    net.pump()
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished)
    keys = {}
    for e in (net.i.engine, net.r.engine):
        assert e is not None
        for sa in e._sas.values():
            if sa.keys is not None and sa.proposal is not None:
                keys[sa.spi_i] = (sa.keys, sa.proposal)
    assert check_wire(net, keys) == {34, 35}
    assert any(d.data[16] == 46 and len(d.data) > 600 for _, d in net.wire)  # IKE_AUTH with a certificate


def test_error_replies_cookies_and_fragments_parse_with_scapy() -> None:
    """COOKIE, INVALID_KE_PAYLOAD, TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN (child), AUTHENTICATION_FAILED
    notifies and SKF fragments (RFC 7383) as scapy reads them."""
    from ike.proto.api import EngineSettings, NegotiationFailed
    from ike.proto.v2 import CookieGuard

    g31 = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31)
    g19 = IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19)
    p1 = phase1(proposals=(g31, g19))
    r1 = mirror1(p1, policy=phase1(proposals=(g19,)).policy)
    esp = (EspProposal("aes-gcm-16", 256, None),)
    p2 = phase2(proposals=esp * 1)
    bad_ts = phase2(2, local="198.18.90.0/24", remote="198.18.91.0/24", proposals=esp)
    bad_prop = phase2(3, local="198.18.11.0/24", remote="198.18.21.0/24", proposals=esp)
    st = EngineSettings(half_open_cookie_threshold=0, fragment_size=200, extra={"ikev2_cookie_guard": CookieGuard()})
    r_bad_prop = mirror2(bad_prop, policy=phase2(proposals=(EspProposal("aes-cbc", 128, "hmac-sha1-96"),)).policy)
    net = Net(p1, [p2, bad_ts, bad_prop], StaticPolicies([p1], [p2]), StaticPolicies([r1], [mirror2(p2), r_bad_prop]),
              settings=st)  # fmt: skip
    net.pump()
    keys: dict[bytes, tuple[IkeKeys, IkeProposal]] = {}
    for e in (net.i.engine, net.r.engine):
        assert e is not None
        for sa in e._sas.values():
            if sa.keys is not None and sa.proposal is not None:
                keys[sa.spi_i] = (sa.keys, sa.proposal)
    notes = {f.notify for f in net.i.of(NegotiationFailed)}
    assert notes == {"TS_UNACCEPTABLE", "NO_PROPOSAL_CHOSEN"}
    assert check_wire(net, keys) >= {34, 35, 36, -1}
    sent = [scapy_chain(d.data[16], d.data[28:]) for _, d in net.wire if d.data[18] == 34 and d.data[19] & 0x20]
    seen = {p.type for chain in sent for p in chain if isinstance(p, s.IKEv2_Notify)}
    assert {16390, 17} <= seen  # COOKIE, INVALID_KE_PAYLOAD
    # Reject the responder's identity to get the INFORMATIONAL with AUTHENTICATION_FAILED.
    p1b = phase1(remote_id="someone.else")
    keys2: dict[bytes, tuple[IkeKeys, IkeProposal]] = {}

    def grab(n: int, dg) -> bool:  # type: ignore[no-untyped-def]
        if net2.r.engine is not None:  # the responder still holds the SA when the notify leaves
            for sa in net2.r.engine._sas.values():
                if sa.keys is not None and sa.proposal is not None:
                    keys2[sa.spi_i] = (sa.keys, sa.proposal)
        return False

    r_policies = StaticPolicies([mirror1(p1b, local_id=p1.remote_id)], [mirror2(p2)])
    net2 = Net(p1b, [p2], StaticPolicies([p1b], [p2]), r_policies, drop=grab)
    net2.pump()
    assert check_wire(net2, keys2) == {34, 35, 37}
    info = next(d for _, d in net2.wire if d.data[18] == 37)
    k, prop = keys2[info.data[:8]]
    first, inner = sk_open(info.data, prop.encr, k.sk_ei, prop.integ, k.sk_ai)
    (notify,) = scapy_chain(first, inner)
    assert isinstance(notify, s.IKEv2_Notify) and notify.type == 24  # AUTHENTICATION_FAILED
