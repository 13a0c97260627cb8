"""Every other datagram lost (strict alternation, both parities), the loss pattern the issue names.

A reply that follows the message it answers at once is always the one lost when that message got
through, so a single resend in answer to a retransmission stays in step with the loss for ever.
These tests take each mode and authentication method through phase 1, quick mode with PFS, DPD
rounds, a phase 2 rekey and a phase 1 rekey with that loss, and check both sides agree at each step.
"""

from __future__ import annotations

import pytest

from ike.proto.api import (
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
)

from .pair import Pair, basic, policies_b
from .pki import Pki
from .test_engine_matrix import _tunnels


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-strict-loss"))


def _alternate(p: Pair, parity: int) -> None:
    # The first datagram left in Pair(); losing it makes index 0 a lost one as the pattern says.
    p.drop = lambda i, to, dg: i % 2 == parity
    if parity == 0:
        p.wire.clear()


def _agree(p: Pair) -> tuple[int, int]:
    """Every phase 1 and phase 2 SA `a` has is one `b` has with the same cookies / keys."""
    ia, ib = p.established()
    cookies_b = {(e.spi_i, e.spi_r) for e in ib}
    assert ia and all((e.spi_i, e.spi_r) in cookies_b for e in ia), (p.a_events, p.b_events)
    ca, cb = p.children()
    out_b = {e.outbound for e in cb}
    assert ca and all(e.inbound in out_b for e in ca), (p.a_events, p.b_events)
    return len(ia), len(ca)


def _no_failures(p: Pair) -> None:
    failed = p.events("a", NegotiationFailed) + p.events("b", NegotiationFailed)
    assert not failed, [f.reason for f in failed]
    dead = [d for d in p.events("a", IkeSaDeleted) + p.events("b", IkeSaDeleted) if "DPD" in d.reason]
    assert not dead, dead


@pytest.mark.parametrize("parity", [0, 1], ids=["even-lost", "odd-lost"])
@pytest.mark.parametrize("auth", ["psk", "rsa", "ecdsa"])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_every_other_datagram_lost_whole_life(pki: Pki, mode: str, auth: str, parity: int) -> None:
    a1, a2, b1, b2 = _tunnels(pki, mode, auth)  # PFS group 19, DPD 60 s, lifetimes 900 s / 2000 s
    p = Pair(a1, [a2], policies_b(b1, b2))
    _alternate(p, parity)

    p.run(until=p.now + 120)
    assert _agree(p) == (1, 1)
    _no_failures(p)

    p.advance(300)  # DPD rounds every 60 s on an idle tunnel: R-U-THERE / ACK under the same loss
    assert p.a.is_established() and p.b is not None and p.b.is_established()
    _no_failures(p)

    p.advance(600)  # phase 2 rekey (before 900 s)
    n_p1, n_p2 = _agree(p)
    assert n_p1 == 1 and n_p2 == 2
    assert p.events("b", ChildSaEstablished)[-1].inbound == p.events("a", ChildSaEstablished)[-1].outbound
    _no_failures(p)

    p.advance(1100)  # phase 1 rekey (before 2000 s), on b's side a new responder engine
    n_p1, _ = _agree(p)
    assert n_p1 >= 2
    new = p.events("a", IkeSaEstablished)[-1]
    assert new.rekey_of is not None
    assert p.b is not None and p.b.is_established()
    assert (p.b_events and p.events("b", IkeSaEstablished)[-1].spi_i) == new.spi_i
    _no_failures(p)


@pytest.mark.parametrize("parity", [0, 1], ids=["even-lost", "odd-lost"])
@pytest.mark.parametrize("pfs", [0, 14])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_every_other_datagram_lost_negotiation(mode: str, pfs: int, parity: int) -> None:
    a1, a2, b1, b2 = basic(mode=mode, pfs=pfs)
    p = Pair(a1, [a2], policies_b(b1, b2))
    _alternate(p, parity)
    p.run(until=p.now + 120)
    assert _agree(p) == (1, 1)
    ca, cb = p.children()
    assert len(ca) == 1 and len(cb) == 1 and ca[0].inbound == cb[0].outbound
    _no_failures(p)
