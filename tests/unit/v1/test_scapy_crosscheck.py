"""Our messages, as the engines really send them, parsed by scapy's ISAKMP layer (an independent
codec): header, SA/proposal/transform with attributes, KE, nonce, ID, hash, notify, delete, VID.
Encrypted messages are captured just before encryption and checked as plaintext."""

from __future__ import annotations

import pytest
from scapy.layers import isakmp as S

from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.payloads import Header, encode_chain
from ike.proto.v1.payloads.header import HEADER_LEN

from .pair import Pair, basic, policies_b


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message the engines build, in the clear (header with the E flag cleared)."""
    out: list[bytes] = []
    real = IsakmpSa.seal

    def seal(self: IsakmpSa, exchange: int, msgid: int, payloads: list[object], encrypt: bool, flags: int = 0) -> bytes:
        first, body, _ = encode_chain(payloads)
        out.append(Header(self.cky_i, self.cky_r, first, exchange, flags, msgid).encode(HEADER_LEN + len(body)) + body)
        return real(self, exchange, msgid, payloads, encrypt, flags)

    monkeypatch.setattr(IsakmpSa, "seal", seal)
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
