"""`ike cmd=activate ipaddr=src,dst` with the real engines in memory: a definition that names no
remote address (it answers anyone) is started toward the address given, and with phase=2 the
host-to-host phase 2 between those addresses is the one started."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_real_engines import PSK, A, B, require_engine

from ike.daemon.engines import RealEngines
from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.policy import (
    Credentials,
    DataManagementPolicy,
    EspProposal,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)
from ike.proto.api import Datagram


def side(me: str, peer: str, version: int, peer_addr: str) -> IndexedPolicies:
    km = KeyManagementPolicy(
        "km", version=version, proposals=(IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19),)
    )
    dm = DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 256, None),))
    p1 = Phase1Tunnel(1, "gw", Identity.parse(me), Identity.parse(peer), me, peer_addr, km, Credentials(psk=PSK))
    lnet, rnet = ("198.19.1.0/24", "198.19.2.0/24") if me == A else ("198.19.2.0/24", "198.19.1.0/24")
    return IndexedPolicies(
        [p1],
        [
            Phase2Tunnel(1, "net", 1, TrafficSelector.subnet(lnet), TrafficSelector.subnet(rnet), dm),
            Phase2Tunnel(2, "hosts", 1, TrafficSelector.host(me), TrafficSelector.host(peer), dm),
        ],
        [],
    )


class Pair:
    def __init__(self, loop: asyncio.AbstractEventLoop, version: int) -> None:
        self.loop = loop
        self.pa = side(A, B, version, "0.0.0.0")  # a wildcard remote: A answers anyone
        self.pb = side(B, A, version, A)
        self.a = TunnelManager(loop, self.pa, RealEngines(self.pa), self._send, NoneDataPlane())
        self.b = TunnelManager(loop, self.pb, RealEngines(self.pb), self._send, NoneDataPlane())
        self.by_addr = {A: self.a, B: self.b}

    def _send(self, dg: Datagram) -> None:
        self.loop.call_soon(self.by_addr[dg.remote[0]].receive, dg.data, dg.remote, dg.local)

    def activate(self, phase: int | None) -> list[tuple[Any, ...]]:
        async def go() -> list[dict[str, Any]]:
            res = self.a.activate(self.pa.by_addresses(A, B, phase), phase)
            await asyncio.wait_for(asyncio.gather(*self.a.waiters_for(res, phase)), 10)
            return self.a.outcome(res)

        return [
            (r["phase"], r["name"], r["status"], r["tunnel"], r["state"]) for r in self.loop.run_until_complete(go())
        ]


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    require_engine(request.param)
    loop = asyncio.new_event_loop()
    try:
        yield Pair(loop, request.param)
    finally:
        loop.close()


def test_ipaddr_starts_a_wildcard_definition_toward_the_address_and_prefers_the_host_phase2(pair: Pair) -> None:
    # By number the definition cannot be started: it has no remote address.
    (r,) = pair.a.activate(pair.pa.by_numbers([1], 1), 1)
    assert r["status"] == "failed" and "can only respond" in r["message"]
    assert pair.activate(2) == [(1, "gw", "started", 2, "established"), (2, "hosts", "started", 1, "established")]
    (t,) = [x for x in pair.a.listing("1+", None, None)["tunnels"] if x["state"] == "established"]
    assert (t["remote"], t["role"]) == (B, "i") and [c["name"] for c in t["phase2"]] == ["hosts"]
    assert t["phase2"][0]["local_ts"] == [A] and t["phase2"][0]["remote_ts"] == [B]
    # Again: it exists, toward that peer. Without phase=, the rest of its phase 2s start under it.
    assert pair.activate(2) == [(1, "gw", "exists", 2, "established"), (2, "hosts", "exists", 1, "established")]
    assert pair.activate(None) == [
        (1, "gw", "exists", 2, "established"),
        (2, "net", "started", 2, "established"),
        (2, "hosts", "exists", 1, "established"),
    ]
    (tb,) = pair.b.listing("1+", None, None)["tunnels"]
    assert tb["role"] == "r" and sorted(c["name"] for c in tb["phase2"]) == ["hosts", "net"]
