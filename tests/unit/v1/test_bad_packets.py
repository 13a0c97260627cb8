"""Bad values from a peer: each is refused with a clear event, nothing escapes, and an established
SA is not disturbed."""

from __future__ import annotations

import struct

import pytest

from ike.proto.api import Datagram, EngineSettings, NegotiationFailed, PacketDropped, SpiRemoved
from ike.proto.crypto import modp_prime
from ike.proto.v1 import Ikev1Engine
from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.payloads import Exchange, Header, KePayload, NoncePayload, encode_chain

from .pair import A_IP, B_IP, Pair, basic, policies_b


def _msg(cky_i: bytes, cky_r: bytes, exch: int, payloads: list[object], msgid: int = 0) -> bytes:
    first, body, _ = encode_chain(payloads)
    return Header(cky_i, cky_r, first, exch, 0, msgid).encode(28 + len(body)) + body


def _rx(data: bytes) -> Datagram:
    return Datagram(data, (B_IP, 500), (A_IP, 500))


def _drain(e: Ikev1Engine) -> list[object]:
    out = []
    while (ev := e.next_event()) is not None:
        out.append(ev)
    return out


def test_respond_refuses_what_is_not_a_first_message() -> None:
    _, _, b1, b2 = basic()
    pol = policies_b(b1, b2)
    s = EngineSettings()
    assert Ikev1Engine.respond(_rx(b"\x01" * 27), pol, s, 0.0) is None
    assert (
        Ikev1Engine.respond(_rx(_msg(b"\x01" * 8, b"\x02" * 8, Exchange.MAIN, [NoncePayload(b"n" * 16)])), pol, s, 0.0)
        is None
    )
    assert (
        Ikev1Engine.respond(_rx(_msg(b"\x01" * 8, bytes(8), Exchange.QUICK, [NoncePayload(b"n" * 16)])), pol, s, 0.0)
        is None
    )
    assert (
        Ikev1Engine.respond(
            _rx(_msg(b"\x01" * 8, bytes(8), Exchange.INFORMATIONAL, [NoncePayload(b"n" * 16)])), pol, s, 0.0
        )
        is None
    )


def test_malformed_first_message_leaves_nothing_half_open() -> None:
    _, _, b1, b2 = basic()
    body = struct.pack("!BBH", 0, 0, 12) + struct.pack("!II", 2, 1)  # SA with the wrong DOI
    data = Header(b"\x01" * 8, bytes(8), 1, Exchange.MAIN, 0, 0).encode(28 + len(body)) + body
    e = Ikev1Engine.respond(_rx(data), policies_b(b1, b2), EngineSettings(), 0.0)
    assert e is not None
    evs = _drain(e)
    drops = [x for x in evs if isinstance(x, PacketDropped)]
    assert drops and "DOI 2" in drops[0].reason
    assert any(isinstance(x, SpiRemoved) for x in evs) and e.finished and e.get_timer() is None


def _to_mm3(p: Pair) -> tuple[bytes, bytes]:
    """Run main mode up to the point where b waits for MM3; returns the cookies."""
    p.deliver_one()  # MM1 -> b, MM2 on the wire
    mm2 = p.wire.pop(0)[1].data
    return mm2[0:8], mm2[8:16]


@pytest.mark.parametrize(
    ("ke", "why"),
    [
        (b"\x05" * 100, "is 100 bytes, expected 256"),
        ((1).to_bytes(256, "big"), "out of range"),
        ((modp_prime(14) - 1).to_bytes(256, "big"), "out of range"),
    ],
)
def test_bad_key_exchange_values(ke: bytes, why: str) -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    cky_i, cky_r = _to_mm3(p)
    assert p.b is not None
    p.b.receive_datagram(_rx(_msg(cky_i, cky_r, Exchange.MAIN, [KePayload(ke), NoncePayload(b"n" * 32)])), p.now)
    evs = _drain(p.b)
    f = [x for x in evs if isinstance(x, NegotiationFailed)]
    assert f and why in f[0].reason and f[0].notify == "INVALID_KEY_INFORMATION", evs


def test_short_nonce_and_missing_payloads_are_dropped() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    cky_i, cky_r = _to_mm3(p)
    assert p.b is not None
    p.b.receive_datagram(
        _rx(_msg(cky_i, cky_r, Exchange.MAIN, [KePayload(b"\x05" * 256), NoncePayload(b"n" * 4)])), p.now
    )
    p.b.receive_datagram(_rx(_msg(cky_i, cky_r, Exchange.MAIN, [NoncePayload(b"n" * 32)])), p.now)
    drops = [x for x in _drain(p.b) if isinstance(x, PacketDropped)]
    assert len(drops) == 2 and "nonce of 4 bytes" in drops[0].reason and "KE" in drops[1].reason
    # the genuine MM3 still works afterwards
    p.wire.clear()
    p.run()


def test_forged_messages_do_not_disturb_an_established_sa() -> None:
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    assert p.b is not None
    sa: IsakmpSa = next(iter(p.b._sas.values()))
    ck = sa.cookies
    junk = [
        _msg(ck[:8], ck[8:], Exchange.QUICK, [NoncePayload(b"n" * 32)], msgid=7),  # unencrypted QM
        Header(ck[:8], ck[8:], 8, Exchange.QUICK, 1, 9).encode(28 + 32) + b"\x00" * 32,  # garbage ciphertext
        Header(ck[:8], ck[8:], 8, Exchange.INFORMATIONAL, 1, 11).encode(28 + 31) + b"\x00" * 31,  # not a block
        Header(ck[:8], ck[8:], 8, Exchange.TRANSACTION, 1, 12).encode(28 + 32) + b"\x00" * 32,  # XAUTH
        Header(ck[:8], b"\x07" * 8, 8, Exchange.INFORMATIONAL, 1, 12).encode(28 + 32) + b"\x00" * 32,  # wrong cookie
    ]
    for j in junk:
        p.b.receive_datagram(_rx(j), p.now)
    drops = [x for x in _drain(p.b) if isinstance(x, PacketDropped)]
    assert len(drops) == len(junk)
    assert all("internal error" not in d.reason for d in drops)
    assert any("XAUTH" in d.reason for d in drops) and any("no ISAKMP SA" in d.reason for d in drops)
    # still works: a new phase 2 SA
    p.a.start_child(a2, p.now)
    p.collect()
    p.run()
    assert len(p.children()[1]) == 2
