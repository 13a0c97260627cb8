"""Mismatch events carry both sides' offers (the issue: 'clear events carrying both sides' offers on a
mismatch'): phase 1 identities, phase 2 selectors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ike.policy import Identity, TrafficSelector
from ike.proto.api import NegotiationFailed

from .pair import Pair, basic, phase2, policies_b
from .pki import Pki
from .test_engine_certs import _tunnels


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-mismatch"))


def _failure(p: Pair, side: str) -> NegotiationFailed:
    (f,) = p.events(side, NegotiationFailed)
    return f  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_responder_refusing_the_initiators_identity_names_both(mode: str) -> None:
    a1, a2, b1, b2 = basic(mode=mode)
    a1 = replace(a1, local_id=Identity.parse("a.example.org"))  # b's t1 expects 198.18.0.1
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 1)
    fb = _failure(p, "b")
    assert fb.phase == 1 and fb.notify == "INVALID_ID_INFORMATION"
    if mode == "main":  # the definition was chosen by address; its identity does not match
        assert fb.offered == ("remote id ipv4 198.18.0.1",)
    else:  # aggressive mode chooses by identity: no definition for it, these are the candidates
        assert fb.offered == ("t1: remote id ipv4 198.18.0.1",)
    assert fb.peer_offered == ("IDii fqdn a.example.org",)


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_initiator_refusing_the_responders_identity_names_both(pki: Pki, mode: str) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "rsa", mode, "fqdn")
    a1 = replace(a1, remote_id=Identity.parse("zzz.example.org"))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 1)
    fa = _failure(p, "a")
    assert fa.phase == 1 and fa.notify == "INVALID_ID_INFORMATION"
    assert fa.offered == ("remote id fqdn zzz.example.org",)
    assert fa.peer_offered == ("IDir fqdn b.example.org",)


def test_selectors_no_definition_covers_lists_the_definitions_under_that_phase1() -> None:
    a1, _, b1, b2 = basic()  # b: c1 10.2.0.0/16 <-> 10.1.0.0/16
    b3 = replace(b2, number=3, name="c3", local_ts=TrafficSelector.parse("10.3.0.0/24"),
                 remote_ts=TrafficSelector.parse("10.4.0.0/24"))  # fmt: skip
    a2 = phase2(a1, "10.9.0.0/16", "10.8.0.0/16")
    p = Pair(a1, [a2], policies_b(b1, b2, b3))
    p.run()
    fb = _failure(p, "b")
    assert fb.phase == 2 and fb.notify == "INVALID_ID_INFORMATION" and "covers" in fb.reason
    assert fb.offered == ("c1: 10.2.0.0/16 <-> 10.1.0.0/16", "c3: 10.3.0.0/24 <-> 10.4.0.0/24")
    assert fb.peer_offered == ("10.8.0.0/16 <-> 10.9.0.0/16",)  # ours <-> theirs, as b sees them
    fa = _failure(p, "a")
    assert fa.phase == 2 and fa.notify == "INVALID_ID_INFORMATION"
