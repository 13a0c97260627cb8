"""Our messages, as the engines really send them, parsed by scapy's ISAKMP layer (an independent
codec): header, SA/proposal/transform with attributes, KE, nonce, ID, hash, notify, delete, VID.
Encrypted messages are captured just before encryption and checked as plaintext."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from scapy.layers import isakmp as S

from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.payloads import Header
from ike.proto.v1.payloads.header import HEADER_LEN

from .pair import Pair, basic, policies_b


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message the engines build, in the clear (header with the E flag cleared)."""
    out: list[bytes] = []
    real = IsakmpSa._seal_chain  # where `seal` and `protected` both end, with the chain encoded

    def seal(self: IsakmpSa, exchange: int, msgid: int, first: int, body: bytes, encrypt: bool, flags: int) -> bytes:
        out.append(Header(self.cky_i, self.cky_r, first, exchange, flags, msgid).encode(HEADER_LEN + len(body)) + body)
        return real(self, exchange, msgid, first, body, encrypt, flags)

    monkeypatch.setattr(IsakmpSa, "_seal_chain", seal)
    return out


def _layers(pkt: S.ISAKMP) -> list[object]:
    out = []
    p = pkt.payload
    while p is not None and not isinstance(p, S.NoPayload if hasattr(S, "NoPayload") else type(None)):
        if p.__class__.__name__ in ("NoPayload", "Raw", "Padding"):
            break
        out.append(p)
        p = p.payload
    return out


def test_main_mode_quick_mode_informational_parse_with_scapy(captured: list[bytes]) -> None:
    a1, a2, b1, b2 = basic(pfs=14)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ca = p.children()[0][0]
    p.a.delete_child(ca.child_id, p.now)
    p.collect()
    p.run()
    p.a.delete(p.now)
    p.collect()
    p.run()
    pkts = [S.ISAKMP(m) for m in captured]
    mm1, mm2, mm3, _mm4, mm5, mm6, qm1, qm2, qm3 = pkts[:9]
    ia = p.established()[0][0]
    for pk in pkts:
        assert pk.init_cookie == ia.spi_i and pk.version == 0x10
    assert mm1.resp_cookie == b"\0" * 8 and mm2.resp_cookie == ia.spi_r
    assert mm1.exch_type == 2 and qm1.exch_type == 32 and pkts[-1].exch_type == 5
    # SA / proposal / transform attributes of MM1
    sa = mm1[S.ISAKMP_payload_SA]
    assert sa.doi == 1 and sa.situation == 1
    prop = sa.prop
    assert prop.proto == 1 and prop.trans_nb == 1
    attrs = dict(prop.trans.transforms)
    assert attrs["Encryption"] == "AES-CBC" and attrs["KeyLength"] == 256 and attrs["Hash"] == "SHA2-256"
    assert attrs["Authentication"] == "PSK" and attrs["GroupDesc"] == "2048MODPgr"
    assert attrs["LifeType"] == "Seconds" and attrs["LifeDuration"] == 28800
    vids = [x.VendorID for x in _layers(mm1) if isinstance(x, S.ISAKMP_payload_VendorID)]
    assert bytes.fromhex("4a131c81070358455c5728f20e95452f") in vids
    assert bytes.fromhex("afcad71368a1f1c96b8696fc77570100") in vids
    # KE / nonce in MM3
    assert len(mm3[S.ISAKMP_payload_KE].ke) == 256
    nonce = mm3[S.ISAKMP_payload_Nonce]
    assert len(getattr(nonce, "nonce", None) or nonce.load) == 32
    # ID and HASH in MM5 / MM6
    idp = mm5[S.ISAKMP_payload_ID]
    assert idp.IDtype == 1 and idp.IdentData == "198.18.0.1"
    assert len(mm5[S.ISAKMP_payload_Hash].hash) == 32
    assert mm6[S.ISAKMP_payload_ID].IDtype == 1
    # quick mode: hash first, ESP proposal with our SPI, nonce, KE, subnet IDs
    assert isinstance(qm1.payload, S.ISAKMP_payload_Hash)
    qprop = qm1[S.ISAKMP_payload_SA].prop
    assert qprop.proto == 3 and ca.inbound.spi == qprop.SPI
    qattrs = dict(qprop.trans.transforms)
    assert qprop.trans.transform_id == 12 and qattrs["KeyLength"] == 128
    assert qattrs["AuthenticationAlgorithm"] == "HMAC-SHA" and qattrs["GroupDesc"] == "2048MODPgr"
    assert qattrs["EncapsulationMode"] == "Tunnel" and qattrs["LifeDuration"] == 3600
    ids = [x for x in _layers(qm1) if isinstance(x, S.ISAKMP_payload_ID)]
    assert [i.IDtype for i in ids] == [4, 4]
    assert bytes(ids[0].IdentData) == bytes([10, 1, 0, 0, 255, 255, 0, 0])
    assert ca.outbound.spi == qm2[S.ISAKMP_payload_SA].prop.SPI
    assert isinstance(qm3.payload, S.ISAKMP_payload_Hash) and len(qm3.hash) == 32
    # informational: delete of the phase 2 SA and of the ISAKMP SA
    dels = [pk[S.ISAKMP_payload_Delete] for pk in pkts if pk.haslayer(S.ISAKMP_payload_Delete)]
    assert dels[0].proto == 3 and dels[0].SPIsize == 4 and dels[0].SPIcount == 1
    assert ca.inbound.spi in [bytes(x) for x in dels[0].SPIs] or bytes(dels[0].SPIs[0]) == ca.inbound.spi
    assert dels[-1].proto == 1 and dels[-1].SPIsize == 16
    assert all(isinstance(pk.payload, S.ISAKMP_payload_Hash) for pk in pkts if pk.exch_type == 5)


def test_dpd_notify_parses_with_scapy(captured: list[bytes]) -> None:
    a1, a2, b1, b2 = basic(dpd=10)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    p.advance(25)
    notes = [S.ISAKMP(m)[S.ISAKMP_payload_Notify] for m in captured if S.ISAKMP(m).haslayer(S.ISAKMP_payload_Notify)]
    kinds = {n.notify_msg_type for n in notes}
    assert {36136, 36137} <= kinds
    ia = p.established()[0][0]
    for n in notes:
        if n.notify_msg_type in (36136, 36137):
            assert n.proto == 1 and n.SPIsize == 16 and ia.spi_i + ia.spi_r == n.SPI and len(n.notify_data) == 4


def _attrs(data: bytes) -> list[tuple[int, int]]:
    """RFC 2408 §3.3 data attributes (TV, or TLV up to 4 bytes), read here by hand."""
    out, pos = [], 0
    while pos < len(data):
        t, v = struct.unpack_from("!HH", data, pos)
        if t & 0x8000:
            out.append((t & 0x7FFF, v))
            pos += 4
        else:
            out.append((t, int.from_bytes(data[pos + 4 : pos + 4 + v], "big")))
            pos += 4 + v
    return out


def test_aggressive_mode_and_status_notifies_parse_with_scapy(captured: list[bytes]) -> None:
    """AM1-AM3 as the engines send them; INITIAL-CONTACT in AM3 (a's first SA with b) and
    RESPONDER-LIFETIME in AM2 and QM2 (b's lifetimes are shorter: 3600 s and 1200 s)."""
    a1, a2, b1, b2 = basic(mode="aggressive")
    b1 = replace(b1, policy=replace(b1.policy, lifetime_s=3600))
    b2 = replace(b2, policy=replace(b2.policy, lifetime_s=1200))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ia, ib = p.established()
    assert ia[0].lifetime_s == 3600 == ib[0].lifetime_s
    assert p.children()[0][0].lifetime_s == 1200
    pkts = [S.ISAKMP(m) for m in captured]
    am1, am2, am3, qm1, qm2 = pkts[:5]
    cookies = ia[0].spi_i + ia[0].spi_r
    assert [pk.exch_type for pk in (am1, am2, am3)] == [4, 4, 4] and qm2.exch_type == 32
    assert am1.resp_cookie == b"\0" * 8 and am2.resp_cookie == ia[0].spi_r
    # AM1: SA, KE, nonce and the initiator's ID, in that order (RFC 2409 §5.4)
    kinds1 = [type(x).__name__ for x in _layers(am1)]
    assert kinds1[:4] == ["ISAKMP_payload_SA", "ISAKMP_payload_KE", "ISAKMP_payload_Nonce", "ISAKMP_payload_ID"]
    assert dict(am1[S.ISAKMP_payload_SA].prop.trans.transforms)["LifeDuration"] == 28800
    assert len(am1[S.ISAKMP_payload_KE].ke) == 256
    assert am1[S.ISAKMP_payload_ID].IDtype == 1 and am1[S.ISAKMP_payload_ID].IdentData == "198.18.0.1"
    # AM2: SA, KE, nonce, ID, HASH_R, and RESPONDER-LIFETIME for the ISAKMP SA
    kinds2 = [type(x).__name__ for x in _layers(am2)]
    assert kinds2[:5] == [
        "ISAKMP_payload_SA", "ISAKMP_payload_KE", "ISAKMP_payload_Nonce", "ISAKMP_payload_ID", "ISAKMP_payload_Hash",
    ]  # fmt: skip
    assert am2[S.ISAKMP_payload_ID].IdentData == "198.18.0.2" and len(am2[S.ISAKMP_payload_Hash].hash) == 32
    n2 = am2[S.ISAKMP_payload_Notify]
    assert n2.notify_msg_type == 24576 and n2.proto == 1 and n2.SPIsize == 16 and bytes(n2.SPI) == cookies
    assert _attrs(bytes(n2.notify_data)) == [(11, 1), (12, 3600)]  # life type seconds, duration
    # AM3: HASH_I first, INITIAL-CONTACT for the ISAKMP SA, no data
    assert isinstance(am3.payload, S.ISAKMP_payload_Hash) and len(am3.hash) == 32
    n3 = am3[S.ISAKMP_payload_Notify]
    assert n3.notify_msg_type == 24578 and n3.proto == 1 and n3.SPIsize == 16 and bytes(n3.SPI) == cookies
    assert not bytes(n3.notify_data)
    # QM2: RESPONDER-LIFETIME for the ESP SA, named by the SPI of the initiator's proposal
    nq = qm2[S.ISAKMP_payload_Notify]
    spi_a = qm1[S.ISAKMP_payload_SA].prop.SPI
    assert nq.notify_msg_type == 24576 and nq.proto == 3 and nq.SPIsize == 4 and bytes(nq.SPI) == bytes(spi_a)
    assert _attrs(bytes(nq.notify_data)) == [(1, 1), (2, 1200)]
