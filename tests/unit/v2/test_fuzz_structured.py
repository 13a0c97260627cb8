"""Structured fuzzing: well-formed but arbitrary payload lists, encrypted with the right keys, as
requests to an established responder and as responses to every kind of request an initiator sends.
Nothing may raise (an internal error would show as a PacketDropped 'internal error' event)."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.policy import TrafficSelector
from ike.proto.api import Datagram, Event
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2.payloads import (
    AuthPayload,
    CertPayload,
    DeletePayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    Transform,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
)
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import encode_chain
from ike.proto.v2.payloads.header import IkeHeader

from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2

transforms = st.builds(
    Transform,
    st.sampled_from([1, 2, 3, 4, 5, 9]),
    st.sampled_from([0, 1, 2, 3, 5, 12, 14, 19, 20, 28, 31, 1000]),
    st.sampled_from([None, 128, 256, 7]),
)
proposals = st.builds(
    Proposal,
    st.integers(1, 3),
    st.sampled_from([1, 2, 3, 9]),
    st.sampled_from([b"", b"\x00\x00\x01\x00", b"\x12\x34\x56\x78", b"12345678"]),
    st.lists(transforms, max_size=6),
)
selectors = st.builds(
    lambda a, b, p: TrafficSelector(ipaddress.IPv4Address(min(a, b)), ipaddress.IPv4Address(max(a, b)), p),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 6, 17]),
)
notifies = st.builds(
    lambda t, p, spi, d: NotifyPayload(protocol=p, spi=spi, notify_type=t, data=d),
    st.sampled_from([1, 7, 11, 14, 17, 24, 35, 38, 43, 44, n.INITIAL_CONTACT, n.NAT_DETECTION_SOURCE_IP,
                     n.COOKIE, n.USE_TRANSPORT_MODE, n.REKEY_SA, n.SIGNATURE_HASH_ALGORITHMS,
                     n.IKEV2_FRAGMENTATION_SUPPORTED, n.ANOTHER_AUTH_FOLLOWS, 40000]),
    st.sampled_from([0, 1, 3]),
    st.sampled_from([b"", b"\x00\x00\x01\x00", b"abcd"]),
    st.binary(max_size=8),
)  # fmt: skip
payload = st.one_of(
    st.builds(lambda ps: SaPayload(proposals=ps), st.lists(proposals, min_size=1, max_size=3)),
    st.builds(lambda g, d: KePayload(group=g, data=d), st.sampled_from([14, 19, 31, 32, 99]),
              st.one_of(st.binary(max_size=8), st.just(bytes(32)), st.just(b"\x09" * 32))),
    st.builds(lambda d: NoncePayload(data=d), st.binary(min_size=16, max_size=40)),
    st.builds(lambda t, d: IdiPayload(id_type=t, data=d), st.sampled_from([1, 2, 3, 5, 9, 11, 77]),
              st.binary(max_size=20)),
    st.builds(lambda t, d: IdrPayload(id_type=t, data=d), st.sampled_from([1, 2, 9]), st.binary(max_size=20)),
    st.builds(lambda m, d: AuthPayload(method=m, data=d), st.sampled_from([1, 2, 9, 14, 200]), st.binary(max_size=40)),
    st.builds(lambda d: CertPayload(data=d), st.binary(min_size=1, max_size=30)),
    notifies,
    st.builds(lambda p, spis: DeletePayload(protocol=p, spis=spis if p != 1 else []), st.sampled_from([1, 3]),
              st.lists(st.binary(min_size=4, max_size=4), max_size=3)),
    st.builds(lambda s_: TsiPayload(selectors=s_), st.lists(selectors, min_size=1, max_size=3)),
    st.builds(lambda s_: TsrPayload(selectors=s_), st.lists(selectors, min_size=1, max_size=3)),
    st.builds(lambda c, d: UnknownPayload(c, 99, d), st.booleans(), st.binary(max_size=10)),
)  # fmt: skip


def _net() -> Net:
    p1, p2 = phase1(dpd_delay_s=0), phase2(pfs_group=31)
    p2b = phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24")
    net = Net(p1, [p2], StaticPolicies([p1], [p2, p2b]), StaticPolicies([mirror1(p1)], [mirror2(p2), mirror2(p2b)]))
    net.pump()
    assert net.i.engine is not None and net.i.engine.is_established()
    return net


def _no_internal_error(events: list[Event]) -> None:
    bad = [e for e in events if "internal error" in getattr(e, "reason", "")]
    assert not bad, bad


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([35, 36, 37]), st.lists(payload, max_size=7))
def test_structured_requests_to_responder(exchange: int, payloads: list) -> None:  # type: ignore[type-arg]
    net = _net()
    r, i = net.r.engine, net.i.engine
    assert r is not None and i is not None and r.sa is not None and i.sa is not None and i.sa.out is not None
    h = IkeHeader(r.sa.spi_i, r.sa.spi_r, 0, exchange, 0x08, r.sa.peer_msg_id)
    first, inner = encode_chain(payloads)
    data = i.sa.out.seal(h, first, inner)
    before = len(net.r.events)
    net.deliver_to_r(net._to_r(Datagram(data, (I_IP, 500), (R_IP, 500))))
    net._collect()
    _no_internal_error(net.r.events[before:])
    net.run(5)  # and whatever follows (deletes, retransmissions) still runs cleanly
    _no_internal_error(net.r.events + net.i.events)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["start_child", "rekey_child", "rekey_ike", "delete_child", "dpd"]), st.lists(payload, max_size=7)
)
def test_structured_responses_to_initiator(kind: str, payloads: list) -> None:  # type: ignore[type-arg]
    net = _net()
    r, i = net.r.engine, net.i.engine
    assert r is not None and i is not None and r.sa is not None and i.sa is not None
    cid = i.child_sas()[0].child_id
    if kind == "start_child":
        i.start_child(phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24"), net.now)
    elif kind == "rekey_child":
        i.rekey_child(cid, net.now)
    elif kind == "rekey_ike":
        i.rekey_ike(net.now)
    elif kind == "delete_child":
        i.delete_child(cid, net.now)
    else:  # a liveness check: make the SA's policy ask for one now
        i.sa.phase1 = phase1(dpd_delay_s=1)
        net.now += 2
        i.handle_timer(net.now)
    out = i.datagrams_to_send()
    assert out, kind
    req = IkeHeader.decode(out[0].data)
    assert r.sa.out is not None
    h = IkeHeader(req.spi_i, req.spi_r, 0, req.exchange, 0x20, req.msg_id)
    first, inner = encode_chain(payloads)
    data = r.sa.out.seal(h, first, inner)
    before = len(net.i.events)
    net.deliver_to_i(net._to_i(Datagram(data, (R_IP, 500), (I_IP, 500))))
    net._collect()
    _no_internal_error(net.i.events[before:])
    net.run(60)
    _no_internal_error(net.r.events + net.i.events)
