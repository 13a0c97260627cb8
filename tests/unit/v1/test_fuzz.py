"""Decoder and engine fuzzing (hypothesis): malformed input only ever gives DecodeError from the codec,
and PacketDropped (never an internal error, never an exception) from the engine."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.proto.api import Datagram, EngineSettings, PacketDropped
from ike.proto.v1 import Ikev1Engine, demux
from ike.proto.v1.payloads import DecodeError, Header, SaPayload, decode_chain
from ike.proto.v1.payloads.attributes import decode_attrs
from ike.proto.v1.payloads.id import IdPayload, id_to_selector
from ike.proto.v1.proposals import Unsupported, decode_phase1_transform, decode_phase2_transform

from .pair import A_IP, B_IP, Pair, basic, policies_b

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=600), st.integers(0, 255))
def test_decode_chain_only_raises_decode_error(first: int, data: bytes, trailing: int) -> None:
    try:
        decode_chain(first, data, trailing)
    except DecodeError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_header_and_demux(data: bytes) -> None:
    try:
        Header.decode(data)
    except DecodeError:
        pass
    d = demux(data)
    assert d is None or (d.version == 1 and len(d.peer_spi) == 8)


@FUZZ
@given(st.binary(max_size=300))
def test_sa_payload_and_attributes(data: bytes) -> None:
    try:
        sa = SaPayload.parse(data)
    except DecodeError:
        return
    for p in sa.proposals:
        for t in p.transforms:
            try:
                decode_phase1_transform(t)
            except (DecodeError, Unsupported):
                pass
            try:
                decode_phase2_transform(p.protocol, t)
            except (DecodeError, Unsupported):
                pass
    try:
        decode_attrs(data)
    except DecodeError:
        pass


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=40))
def test_quick_mode_ids(t: int, proto: int, port: int, data: bytes) -> None:
    try:
        id_to_selector(IdPayload(t, data, proto, port))
    except DecodeError:
        pass


def _no_internal_errors(eng: Ikev1Engine) -> list[PacketDropped]:
    evs = []
    while (e := eng.next_event()) is not None:
        if isinstance(e, PacketDropped):
            assert "internal error" not in e.reason, e.reason
            evs.append(e)
    return evs


@FUZZ
@given(st.binary(min_size=0, max_size=400))
def test_respond_to_garbage(data: bytes) -> None:
    _, _, b1, b2 = basic()
    dg = Datagram(data, (B_IP, 500), (A_IP, 500))
    eng = Ikev1Engine.respond(dg, policies_b(b1, b2), EngineSettings(), 0.0)
    if eng is not None:
        _no_internal_errors(eng)
        eng.handle_timer(100.0)
        _no_internal_errors(eng)


def _first_message_with_header(body: bytes, exch: int, np: int) -> bytes:
    h = Header(b"\x01" * 8, bytes(8), np, exch, 0, 0)
    return h.encode(28 + len(body)) + body


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([2, 4]), st.integers(0, 20))
def test_respond_to_plausible_first_messages(body: bytes, exch: int, np: int) -> None:
    _, _, b1, b2 = basic()
    dg = Datagram(_first_message_with_header(body, exch, np), (B_IP, 500), (A_IP, 500))
    eng = Ikev1Engine.respond(dg, policies_b(b1, b2), EngineSettings(), 0.0)
    if eng is not None:
        _no_internal_errors(eng)


def _established_pair() -> Pair:
    a1, a2, b1, b2 = basic(pfs=19)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    return p


_PAIR_MESSAGES: list[bytes] = []


def _messages() -> list[bytes]:
    if not _PAIR_MESSAGES:
        p = _established_pair()
        _PAIR_MESSAGES.extend(dg.data for _, dg in p.log)
    return _PAIR_MESSAGES


@FUZZ
@given(st.data())
def test_mutated_real_messages_into_established_engines(data: st.DataObject) -> None:
    msgs = _messages()
    p = _established_pair()
    assert p.b is not None
    ia = p.established()[0][0]
    for _ in range(3):
        m = bytearray(data.draw(st.sampled_from(msgs)))
        # keep the new pair's cookies so the message reaches the SA, then damage it
        m[0:16] = ia.spi_i + ia.spi_r
        n = data.draw(st.integers(1, 6))
        for _ in range(n):
            i = data.draw(st.integers(0, len(m) - 1))
            m[i] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            m = m[: data.draw(st.integers(0, len(m)))]
            if len(m) >= 28:
                m[24:28] = struct.pack("!I", len(m))
        for eng, dg in (
            (p.a, Datagram(bytes(m), (A_IP, 500), (B_IP, 500))),
            (p.b, Datagram(bytes(m), (B_IP, 500), (A_IP, 500))),
        ):
            eng.receive_datagram(dg, p.now)
            _no_internal_errors(eng)
    # still up, and still able to negotiate
    assert p.a.is_established() and p.b.is_established()
    p.a.start_child(p.events("a", type(p.children()[0][0]))[0].phase2, p.now)
    p.collect()
    p.run()
    assert len(p.children()[0]) == 2
