"""Bad packets are dropped or answered as RFC 7296 says, counted, reported, and never raise."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.proto.api import Datagram, EngineSettings, IkeSaEstablished, NegotiationFailed, PacketDropped
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard, Ikev2Engine, StatelessOutput, demux
from ike.proto.v2.payloads import (
    DecodeError,
    KePayload,
    NotifyPayload,
    UnknownPayload,
    VendorIdPayload,
    decode_chain,
    decode_outer,
    encode_plain,
)
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.header import IkeHeader

from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2

SETTINGS = EngineSettings(extra={"ikev2_cookie_guard": CookieGuard()})


def policies() -> StaticPolicies:
    p1, p2 = phase1(), phase2()
    return StaticPolicies([mirror1(p1)], [mirror2(p2)])


def first_init() -> bytes:
    p1, p2 = phase1(), phase2()
    eng = Ikev2Engine.initiate(p1, [p2], StaticPolicies([p1], [p2]), SETTINGS, (I_IP, 500), (R_IP, 500), 0.0)
    return eng.datagrams_to_send()[0].data


def to_r(data: bytes) -> Datagram:
    return Datagram(data, (R_IP, 500), (I_IP, 500))


def respond(data: bytes) -> tuple[Ikev2Engine | None, StatelessOutput]:
    out = StatelessOutput()
    return Ikev2Engine.respond(to_r(data), policies(), SETTINGS, 0.0, out), out


def test_truncated_and_wrong_length() -> None:
    good = first_init()
    for bad in (good[:20], good[:-1], good[:27] + b"", good + b"\0", good[:28]):
        eng, out = respond(bad)
        assert eng is None and not out.datagrams
        assert out.events and isinstance(out.events[0], PacketDropped)
    assert demux(good[:-1]) is None and demux(b"x" * 10) is None
    d = demux(good)
    assert d is not None and d.our_spi is None and d.peer_spi == good[:8]


def test_bad_payload_length_inside() -> None:
    good = bytearray(first_init())
    struct.pack_into("!H", good, 30, 9999)  # first payload claims to be huge
    eng, out = respond(bytes(good))
    assert eng is None and "does not fit" in out.events[0].reason  # type: ignore[union-attr]


def _rebuild(extra_first: list, extra_last: list) -> bytes:  # type: ignore[type-arg]
    h, payloads = decode_outer(first_init())
    return encode_plain(h, extra_first + payloads + extra_last)


def test_unknown_critical_payload_answered() -> None:
    data = _rebuild([], [UnknownPayload(True, 200, b"boom")])
    eng, out = respond(data)
    assert eng is None
    _, payloads = decode_outer(out.datagrams[0].data)
    assert isinstance(payloads[0], NotifyPayload) and payloads[0].notify_type == n.UNSUPPORTED_CRITICAL_PAYLOAD
    assert payloads[0].data == bytes([200])


def test_unknown_non_critical_things_ignored() -> None:
    data = _rebuild(
        [VendorIdPayload(data=b"strongSwan")],
        [
            UnknownPayload(False, 200, b"whatever"),
            NotifyPayload(notify_type=n.MULTIPLE_AUTH_SUPPORTED),
            NotifyPayload(notify_type=n.EAP_ONLY_AUTHENTICATION),
            NotifyPayload(notify_type=40000, data=b"x"),
        ],
    )
    eng, out = respond(data)
    assert eng is not None and not out.events


def test_invalid_dh_value_answered_invalid_syntax() -> None:
    h, payloads = decode_outer(first_init())
    payloads = [KePayload(group=31, data=bytes(32)) if isinstance(p, KePayload) else p for p in payloads]
    eng, out = respond(encode_plain(h, payloads))
    assert eng is None
    _, reply = decode_outer(out.datagrams[0].data)
    assert isinstance(reply[0], NotifyPayload) and reply[0].notify_type == n.INVALID_SYNTAX
    assert any(isinstance(e, NegotiationFailed) and "key exchange value" in e.reason for e in out.events)


def test_bad_icv_dropped_then_retransmission_succeeds() -> None:
    hit: list[int] = []

    def corrupt(n_: int, dg: Datagram) -> bool:
        return False

    p1, p2 = phase1(), phase2()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]), drop=corrupt)
    # Flip a byte of the first IKE_AUTH request on its way.
    orig = net.deliver_to_r

    def flip(dg: Datagram) -> None:
        if dg.data[18] == 35 and not hit:
            hit.append(1)
            b = bytearray(dg.data)
            b[-5] ^= 1
            dg = Datagram(bytes(b), dg.local, dg.remote)
        orig(dg)

    net.deliver_to_r = flip  # type: ignore[method-assign]
    net.run(10)
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished)
    drops = net.drops(net.r)
    assert any("integrity check failed" in d for d in drops), drops
    assert net.r.engine is not None and net.r.engine.stats["dropped"] >= 1


def test_replayed_and_unprotected_messages() -> None:
    p1, p2 = phase1(dpd_delay_s=5), phase2()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]))
    net.pump()
    auth_req = next(dg for s, dg in net.wire if s == "i" and dg.data[18] == 35)
    net.run(12)  # liveness checks move the message IDs on
    assert net.r.engine is not None
    before = len(net.r.of(IkeSaEstablished))
    net.deliver_to_r(net._to_r(auth_req))
    net._collect()
    assert any("outside the window" in d for d in net.drops(net.r))
    assert len(net.r.of(IkeSaEstablished)) == before
    # An INFORMATIONAL in clear text is refused.
    sa = net.r.engine.sa
    assert sa is not None
    h = IkeHeader(sa.spi_i, sa.spi_r, 0, 37, 0x08, 50)
    net.deliver_to_r(net._to_r(Datagram(encode_plain(h, []), (I_IP, 500), (R_IP, 500))))
    net._collect()
    assert any("unprotected" in d for d in net.drops(net.r))
    assert net.r.engine.is_established()


# --- fuzzing --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_decoder_raises_only_decode_error(first: int, data: bytes) -> None:
    try:
        decode_chain(first, data)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_datagrams_to_responder(data: bytes) -> None:
    _eng, out = respond(data)
    assert not any("internal error" in getattr(e, "reason", "") for e in out.events)


_INIT = first_init()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_INIT) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, len(_INIT)),
)
def test_mutated_ike_sa_init(edits: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(_INIT)
    for pos, val in edits:
        b[pos] = val
    _eng, out = respond(bytes(b[: max(cut, 28)]))
    assert not any("internal error" in getattr(e, "reason", "") for e in out.events)


class _Established:
    net: Net | None = None


def _established() -> Net:
    if _Established.net is None:
        p1, p2 = phase1(), phase2()
        net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]))
        net.pump()
        _Established.net = net
    return _Established.net


PAYLOAD_TYPES = st.sampled_from([0, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 53, 99])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOAD_TYPES, st.sampled_from([35, 36, 37, 40]), st.binary(max_size=200), st.booleans())
def test_fuzzed_inner_payloads_pass_the_icv_and_never_raise(
    first: int, exchange: int, inner: bytes, response: bool
) -> None:
    """Encrypted with the right keys, so the decoders and exchange handlers behind the ICV see it."""
    net = _established()
    r = net.r.engine
    assert r is not None and r.sa is not None
    sa = r.sa
    i_sa = net.i.engine.sa  # type: ignore[union-attr]
    assert i_sa is not None and i_sa.out is not None
    flags = 0x08 | (0x20 if response else 0)
    h = IkeHeader(sa.spi_i, sa.spi_r, 0, exchange, flags, sa.peer_msg_id)
    data = i_sa.out.seal(h, first, inner)
    n_before = len(net.r.events)
    net.deliver_to_r(net._to_r(Datagram(data, (I_IP, 500), (R_IP, 500))))
    net._collect()
    new = net.r.events[n_before:]
    assert not any("internal error" in getattr(e, "reason", "") for e in new), new
    net.i.engine.datagrams_to_send()  # type: ignore[union-attr]
    r.datagrams_to_send()
    if not r.is_established():
        _Established.net = None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                NotifyPayload(notify_type=n.INVALID_SYNTAX),
                NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN),
                NotifyPayload(notify_type=n.INVALID_KE_PAYLOAD, data=b"\x00\x13"),
                NotifyPayload(notify_type=n.COOKIE, data=b"c" * 8),
                NotifyPayload(notify_type=n.NAT_DETECTION_SOURCE_IP, data=b"x" * 20),
                KePayload(group=31, data=b"k" * 32),
                UnknownPayload(False, 77, b"zz"),
            ]
        ),
        max_size=5,
    )
)
def test_fuzzed_init_responses_to_initiator(payloads: list) -> None:  # type: ignore[type-arg]
    p1, p2 = phase1(), phase2()
    eng = Ikev2Engine.initiate(p1, [p2], StaticPolicies([p1], [p2]), SETTINGS, (I_IP, 500), (R_IP, 500), 0.0)
    req = eng.datagrams_to_send()[0].data
    h = IkeHeader(req[:8], b"\x11" * 8, 0, 34, 0x20, 0)
    data = encode_plain(h, payloads)
    eng.receive_datagram(Datagram(data, (I_IP, 500), (R_IP, 500)), 0.1)
    evs = []
    while (e := eng.next_event()) is not None:
        evs.append(e)
    assert not any("internal error" in getattr(e, "reason", "") for e in evs), evs
    eng.handle_timer(100.0)
