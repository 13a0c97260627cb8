"""NAT keepalives (RFC 3948 §2.3): the side behind a NAT sends a 1-byte 0xff datagram from port
4500 every EngineSettings.nat_keepalive_s while its association lives; the other side, and both
sides without a NAT, send none. The real engines run through a simulated NAT that rewrites A's
address and ports, so they detect it themselves (NAT-D / NAT_DETECTION_*)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_real_engines import A, B, defs, require_engine

from ike.daemon.engines import RealEngines
from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.proto.api import Address, Datagram

PUBLIC = "198.18.0.100"  # the NAT's outside address
INTERVAL = 0.05


def b_defs(nat: bool, version: int) -> IndexedPolicies:
    """B's view: A is reached at the NAT's address but still identifies as its own address."""
    base = defs(B, A, version)
    if not nat:
        return base
    p1 = dataclasses.replace(base.p1_by_number[1], remote_addr=PUBLIC)
    return IndexedPolicies([p1], list(base.p2_by_number.values()), [])


class NatNet:
    def __init__(self, loop: asyncio.AbstractEventLoop, version: int, nat: bool) -> None:
        self.loop, self.nat = loop, nat
        self.pa, self.pb = defs(A, B, version), b_defs(nat, version)  # A does not know it is behind a NAT
        self.sent: dict[str, list[tuple[float, Address, Address]]] = {A: [], B: []}
        self.a = self._manager(A, self.pa)
        self.b = self._manager(B, self.pb)
        self.out_port = {500: 40500, 4500: 44500}  # A's ports as the NAT maps them
        self.in_port = {v: k for k, v in self.out_port.items()}

    def _manager(self, who: str, pol: IndexedPolicies) -> TunnelManager:
        def keepalive(local: Address, remote: Address) -> None:
            self.sent[who].append((self.loop.time(), local, remote))

        return TunnelManager(
            self.loop,
            pol,
            RealEngines(pol),
            self._send,
            NoneDataPlane(),
            send_keepalive=keepalive,
            nat_keepalive_s=INTERVAL,
        )

    def _send(self, dg: Datagram) -> None:
        if dg.local[0] == A:
            src = (PUBLIC, self.out_port[dg.local[1]]) if self.nat else dg.local
            self.loop.call_soon(self.b.receive, dg.data, dg.remote, src)
        else:
            dst = (A, self.in_port[dg.remote[1]]) if self.nat else dg.remote
            self.loop.call_soon(self.a.receive, dg.data, dst, dg.local)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("nat", [True, False], ids=["nat", "no-nat"])
def test_keepalives_only_from_behind_the_nat(version: int, nat: bool) -> None:
    require_engine(version)
    loop = asyncio.new_event_loop()
    try:
        net = NatNet(loop, version, nat)

        async def go() -> None:
            res = net.a.activate(net.pa.by_numbers([1], None), None)
            await asyncio.wait_for(asyncio.gather(*net.a.waiters_for(res, None)), 10)
            out = net.a.outcome(res)
            assert [r["state"] for r in out] == ["established"] * 2, out
            await asyncio.sleep(INTERVAL * 6.5)

        loop.run_until_complete(go())
        (ta,) = net.a.listing("1", None, None)["tunnels"]
        (tb,) = net.b.listing("1", None, None)["tunnels"]
        assert net.sent[B] == []  # B is not behind a NAT
        if not nat:
            assert (ta["nat"], tb["nat"]) == ("none", "none")
            assert net.sent[A] == []
            return
        assert (ta["nat"], tb["nat"]) == ("local behind NAT", "peer behind NAT")
        sent = net.sent[A]
        assert 3 <= len(sent) <= 7, sent  # 6 on an idle machine; timers never fire early
        assert {(local, remote) for _t, local, remote in sent} == {((A, 4500), (B, 4500))}
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(sent)]
        assert all(INTERVAL * 0.9 <= g <= INTERVAL * 5 for g in gaps), gaps
        assert net.a.stats.keepalives_sent == len(sent)

        # They stop with the association.
        net.a.remove(None, None)
        loop.run_until_complete(asyncio.sleep(INTERVAL * 4))
        n = len(net.sent[A])
        loop.run_until_complete(asyncio.sleep(INTERVAL * 4))
        assert len(net.sent[A]) == n
    finally:
        loop.close()
