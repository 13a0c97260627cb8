"""The life of an IKE SA after IKE_AUTH, as scenarios any authentication method runs: child and IKE
rekeys, deletes, liveness checks (DPD), a lost response answered from the cache and a link that
loses every other datagram.

Each scenario takes a `MakeNet`: `make(p1=..., p2s=..., drop=...)` builds a `Net` whose initiator
definition is `phase1(**p1)` with children `[phase2(**kw) for kw in p2s]` (the responder mirrors
them) and whose wire loses what `drop` says. test_engine_pairs.py runs them with a pre-shared key,
test_engine_certs.py with each kind of certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ike.proto.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    IkeSaDeleted,
    IkeSaEstablished,
    SpiAdded,
    SpiRemoved,
)
from ike.proto.v2.payloads.header import IkeHeader

from .harness import Net

Drop = Callable[[int, Datagram], bool]


class MakeNet(Protocol):
    def __call__(
        self, *, p1: dict[str, Any] | None = None, p2s: list[dict[str, Any]] | None = None, drop: Drop | None = None
    ) -> Net: ...


def established(net: Net) -> tuple[IkeSaEstablished, IkeSaEstablished]:
    ei, er = net.i.of(IkeSaEstablished), net.r.of(IkeSaEstablished)
    assert ei and er, (net.i.events, net.r.events)
    return ei[-1], er[-1]


def child_pair(net: Net, index: int = -1) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    ci, cr = net.i.of(ChildSaEstablished), net.r.of(ChildSaEstablished)
    assert ci and cr, (net.i.events, net.r.events)
    a, b = ci[index], cr[index]
    assert a.outbound == b.inbound and a.inbound == b.outbound
    assert a.outbound.spi == b.inbound.spi and a.inbound.spi != a.outbound.spi
    return a, b


SECOND_CHILD = {"number": 2, "local": "198.18.11.0/24", "remote": "198.18.21.0/24"}


def child_rekey(make: MakeNet, pfs: int) -> None:
    net = make(p2s=[{"pfs_group": pfs}])
    net.pump()
    old_i, old_r = child_pair(net)
    assert net.i.engine is not None
    net.i.engine.rekey_child(old_i.child_id, net.now)
    net.pump()
    new_i, new_r = child_pair(net)
    assert new_i.rekey_of == old_i.child_id and new_r.rekey_of == old_r.child_id
    assert new_i.pfs_group == pfs
    assert new_i.inbound.enc_key != old_i.inbound.enc_key
    assert [e.child_id for e in net.i.of(ChildSaDeleted)] == [old_i.child_id]
    assert [(e.child_id, e.reason) for e in net.r.of(ChildSaDeleted)] == [(old_r.child_id, "rekeyed")]


def ike_rekey_moves_children(make: MakeNet) -> None:
    net = make()
    net.pump()
    ei, er = established(net)
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.rekey_ike(net.now)
    net.pump()
    ni, nr = established(net)
    assert ni.rekey_of == ei.sa_id and nr.rekey_of == er.sa_id
    assert ni.spi_i == nr.spi_i and ni.spi_i != ei.spi_i
    assert [e.reason for e in net.i.of(IkeSaDeleted)] == ["rekeyed"]
    assert [e.reason for e in net.r.of(IkeSaDeleted)] == ["rekeyed"]
    assert not net.i.of(ChildSaDeleted)
    assert len(net.i.engine.child_sas()) == 1
    # The new IKE SA works: rekey the child under it, then delete everything.
    net.i.engine.rekey_child(net.i.engine.child_sas()[0].child_id, net.now)
    net.pump()
    assert net.i.of(ChildSaEstablished)[-1].sa_id == ni.sa_id
    net.i.engine.delete(net.now)
    net.pump()
    assert net.r.of(IkeSaDeleted)[-1].reason == "deleted by peer"


def delete_ike_takes_children(make: MakeNet) -> None:
    net = make()
    net.pump()
    assert net.i.engine is not None and net.r.engine is not None
    net.r.engine.delete(net.now)
    net.pump()
    assert net.r.of(IkeSaDeleted)[0].reason == "deleted locally"
    assert net.i.of(IkeSaDeleted)[0].reason == "deleted by peer"
    assert net.i.of(ChildSaDeleted) and net.r.of(ChildSaDeleted)
    assert not net.i.engine.is_established() and not net.r.engine.is_established()
    assert {e.spi for e in net.i.of(SpiAdded)} == {e.spi for e in net.i.of(SpiRemoved)}
    assert net.i.engine.get_timer() is None


def dpd_clear_when_peer_goes_silent(make: MakeNet) -> None:
    silent = [False]
    net = make(p1={"dpd_delay_s": 10}, drop=lambda n, dg: silent[0])
    net.pump()
    established(net)
    net.run(5)
    assert not net.i.of(IkeSaDeleted)
    silent[0] = True
    net.run(200)
    d = net.i.of(IkeSaDeleted)
    assert d and d[0].reason == "peer unreachable (DPD)"
    assert net.i.of(ChildSaDeleted)
    assert net.i.engine is not None and net.i.engine.get_timer() is None


def dpd_keeps_sa_alive_when_peer_answers(make: MakeNet) -> None:
    net = make(p1={"dpd_delay_s": 10})
    net.run(100)
    assert not net.i.of(IkeSaDeleted) and not net.r.of(IkeSaDeleted)
    assert net.i.engine is not None and net.i.engine.stats["liveness checks"] >= 5


def retransmitted_request_answered_from_cache(make: MakeNet) -> None:
    # Lose the responder's IKE_AUTH response once.
    lost: list[int] = []

    def drop(n: int, dg: Datagram) -> bool:
        h = IkeHeader.decode(dg.data)
        if h.exchange == 35 and h.is_response and not lost:
            lost.append(n)
            return True
        return False

    net = make(drop=drop)
    net.run(10)
    established(net)
    assert lost
    assert net.r.engine is not None and net.r.engine.stats["retransmitted requests answered"] == 1
    assert len(net.r.of(ChildSaEstablished)) == 1 and len(net.r.of(IkeSaEstablished)) == 1


def every_other_datagram_lost(make: MakeNet) -> None:
    net = make(p2s=[{}, SECOND_CHILD], drop=lambda n, dg: n % 2 == 0)
    net.run(60)
    established(net)
    assert len(net.i.of(ChildSaEstablished)) == 2 and len(net.r.of(ChildSaEstablished)) == 2
    assert net.i.engine is not None
    cid = net.i.of(ChildSaEstablished)[0].child_id
    net.i.engine.rekey_child(cid, net.now)
    net.run(60)
    assert net.i.of(ChildSaEstablished)[-1].rekey_of == cid
    assert cid in [e.child_id for e in net.i.of(ChildSaDeleted)]
    net.i.engine.rekey_ike(net.now)
    net.run(60)
    assert net.i.of(IkeSaEstablished)[-1].rekey_of is not None
    assert net.r.of(IkeSaEstablished)[-1].rekey_of is not None


SCENARIOS: dict[str, Callable[[MakeNet], None]] = {
    "child-rekey": lambda make: child_rekey(make, 0),
    "child-rekey-pfs": lambda make: child_rekey(make, 31),
    "ike-rekey": ike_rekey_moves_children,
    "delete": delete_ike_takes_children,
    "dpd-silent-peer": dpd_clear_when_peer_goes_silent,
    "dpd-answered": dpd_keeps_sa_alive_when_peer_answers,
    "lost-response": retransmitted_request_answered_from_cache,
    "every-other-lost": every_other_datagram_lost,
}
