"""COOKIE (RFC 7296 §2.6) above `iked --cookie-threshold N` half-open IKE SAs, with N > 0: the
settings come from the daemon's own command line, the engines are the real ones."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ike.daemon.main import engine_settings, parse_args
from ike.proto.api import Datagram, IkeSaEstablished
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard, Ikev2Engine, StatelessOutput
from ike.proto.v2.payloads import NotifyPayload, SaPayload, decode_outer
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.header import IKE_SA_INIT

from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2

THRESHOLD = 3


def cookies(data: bytes) -> list[bytes]:
    _, payloads = decode_outer(data)
    return [p.data for p in payloads if isinstance(p, NotifyPayload) and p.notify_type == n.COOKIE]


def test_option_reaches_the_engine_settings() -> None:
    assert engine_settings(parse_args([])).half_open_cookie_threshold == 50
    assert engine_settings(parse_args(["--cookie-threshold", "3"])).half_open_cookie_threshold == 3
    for bad in ("-1", "1000001"):
        with pytest.raises(SystemExit):
            parse_args(["--cookie-threshold", bad])


def test_cookie_only_above_threshold_and_retry_succeeds() -> None:
    guard = CookieGuard()
    settings = replace(
        engine_settings(parse_args(["--cookie-threshold", str(THRESHOLD)])), extra={"ikev2_cookie_guard": guard}
    )
    p1, p2 = phase1(), phase2()
    r_policies = StaticPolicies([mirror1(p1)], [mirror2(p2)])
    now = 1000.0
    # THRESHOLD initiators whose IKE_AUTH never comes: each is answered in full, without a COOKIE.
    half_open = []
    for k in range(THRESHOLD):
        i = Ikev2Engine.initiate(p1, [p2], StaticPolicies([p1], [p2]), settings, (I_IP, 500), (R_IP, 500), now)
        (req,) = i.datagrams_to_send()
        out = StatelessOutput()
        r = Ikev2Engine.respond(Datagram(req.data, (R_IP, 500), (I_IP, 500)), r_policies, settings, now, out)
        assert r is not None, out.events
        (resp,) = r.datagrams_to_send()
        assert not cookies(resp.data)
        _, payloads = decode_outer(resp.data)
        assert any(isinstance(p, SaPayload) for p in payloads)
        half_open.append(r)
        assert guard.half_open == k + 1
    # One more: the responder keeps no state and asks for a COOKIE; the initiator returns it and
    # both ends establish.
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), r_policies, settings=settings, start=now)
    net.pump()
    ei, er = net.i.of(IkeSaEstablished), net.r.of(IkeSaEstablished)
    assert ei and er, (net.i.events, net.r.events)
    inits = [d.data for side, d in net.wire if d.data[18] == IKE_SA_INIT]
    first_req, cookie_reply, retry, answer = inits[:4]
    assert not cookies(first_req)
    (cookie,) = cookies(cookie_reply)
    assert cookies(retry) == [cookie]
    assert not cookies(answer)
    assert len(inits) == 4
    # The half-open SAs count until they end; the one that completed IKE_AUTH no longer does.
    assert guard.half_open == THRESHOLD
    for r in half_open:
        r.handle_timer(now + 100)
    assert guard.half_open == 0
