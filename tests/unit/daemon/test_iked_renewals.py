"""Phase 1 and phase 2 renewals with the real engines in memory, on a clock that skips idle time
(virtual_time.py), so half a minute of short lifetimes runs in a fraction of a second.

IKEv1 has no phase 1 rekey exchange: the initiator renews with a new main mode under new cookies,
which reaches a new responder engine at the peer. That is still the same tunnel: the responder's
listing must keep its numbers and count the rekeys, as the initiator's does."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_real_engines import A, B, RealNet, defs, require_engine
from virtual_time import VirtualTimeLoop

from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies

P1_LIFE, P2_LIFE, RUN = 6, 20, 26  # 4 phase 1 renewals and a phase 2 rekey within the run


def short_defs(local: str, remote: str, version: int) -> IndexedPolicies:
    base = defs(local, remote, version)
    p1 = base.p1_by_number[1]
    p1 = dataclasses.replace(p1, policy=dataclasses.replace(p1.policy, lifetime_s=P1_LIFE))
    p2 = base.p2_by_number[1]
    p2 = dataclasses.replace(p2, policy=dataclasses.replace(p2.policy, lifetime_s=P2_LIFE))
    return IndexedPolicies([p1], [p2], [])


class ShortNet(RealNet):
    def __init__(self, loop: asyncio.AbstractEventLoop, version: int) -> None:
        super().__init__(loop, version, short_defs(A, B, version), short_defs(B, A, version))
        self.version = version

    def run(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def activate(self, m: TunnelManager, pol: IndexedPolicies, phase: int | None) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            res = m.activate(pol.by_numbers([1], phase), phase)
            await asyncio.wait_for(asyncio.gather(*m.waiters_for(res, phase)), 10)
            return m.outcome(res)

        return self.loop.run_until_complete(go())


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def net(request: pytest.FixtureRequest) -> Iterator[ShortNet]:
    version: int = request.param
    require_engine(version)
    loop = VirtualTimeLoop()
    try:
        yield ShortNet(loop, version)
    finally:
        loop.close()


def summary(m: TunnelManager) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for t in m.listing("1+", None, None)["tunnels"]:
        if t.get("phase") == 2:
            out.append(("orphan", t["tunnel"], t["state"], t["refresh"]))
            continue
        kids = [(c["tunnel"], c["state"], c["refresh"]) for c in t["phase2"]]
        out.append((t["tunnel"], t["role"], t["state"], kids))
    return out


def rekeys(m: TunnelManager) -> tuple[int, int]:
    (t,) = m.listing("1+", None, None)["tunnels"]
    return t["rekeys"], t["phase2"][0]["rekeys"]


def test_renewals_keep_tunnel_numbers_on_both_sides(net: ShortNet) -> None:
    out = net.activate(net.a, net.pa, None)
    assert [r["state"] for r in out] == ["established", "established"], out
    spi_before = net.b.listing("2", None, None)["tunnels"][0]["spi_in"]
    net.run(RUN)
    assert summary(net.a) == [(1, "i", "established", [(1, "established", True)])]
    # the responder: one phase 1 tunnel, renewed, not one per renewal with its phase 2 orphaned
    assert summary(net.b) == [(1, "r", "established", [(1, "established", True)])], summary(net.b)
    for m in (net.a, net.b):
        p1_rekeys, p2_rekeys = rekeys(m)
        assert p1_rekeys >= 3 and p2_rekeys >= 1, (m is net.a, p1_rekeys, p2_rekeys)
    assert net.b.listing("2", None, None)["tunnels"][0]["spi_in"] != spi_before
    # the replaced SAs are gone from both data planes, and the old engines with them
    assert len(net.da.children) == 1 and len(net.db.children) == 1
    # Engines do not pile up: the current one, one renewing, and one still carrying the phase 2
    # SA that has not been rekeyed under a newer ISAKMP SA yet.
    for _ in range(3):
        assert len(net.b.slots) <= 3, net.b.slots
        net.run(P1_LIFE)


def test_phase2_we_start_under_a_responder_sa_survives_its_renewals(net: ShortNet) -> None:
    """B answered phase 1 and then started the phase 2 itself: A renews phase 1, B must keep
    rekeying its phase 2 (under the newest ISAKMP SA, with the same number)."""
    assert [r["state"] for r in net.activate(net.a, net.pa, 1)] == ["established"]
    out = net.activate(net.b, net.pb, 2)
    assert [(r["phase"], r["status"], r["state"]) for r in out] == [
        (1, "exists", "established"),
        (2, "started", "established"),
    ]
    net.run(RUN)
    for m in (net.a, net.b):
        assert [x[0] for x in summary(m)] == [1], summary(m)
        (t,) = m.listing("1+", None, None)["tunnels"]
        assert t["state"] == "established" and [(c["tunnel"], c["refresh"]) for c in t["phase2"]] == [(1, True)]
        assert t["phase2"][0]["rekeys"] >= 1
    # no replaced SA left behind at either end (the old engine told the peer)
    assert len(net.da.children) == 1 and len(net.db.children) == 1


def test_removing_a_renewed_phase1_deletes_every_isakmp_sa_and_orphans_its_phase2(net: ShortNet) -> None:
    net.activate(net.a, net.pa, None)
    net.run(P1_LIFE)  # one renewal: B may still hold the old ISAKMP SA, awaiting A's Delete
    assert rekeys(net.b)[0] >= 1
    net.b.remove(1, [1])
    net.run(0.5)
    a_up = [t for t in net.a.listing("1", None, None)["tunnels"] if t["state"] == "established"]
    # IKEv1 deletes every ISAKMP SA of it at once; IKEv2 keeps the IKE SA for the child's sake
    assert len(a_up) == (0 if net.version == 1 else 1), a_up
    (orphan,) = net.b.listing("1+", None, None)["tunnels"]
    assert orphan["phase"] == 2 and orphan["tunnel"] == 1 and orphan["refresh"] is False
    net.run(P2_LIFE)
    assert not net.da.children and not net.db.children
    assert not net.a.slots and not net.b.slots


@pytest.mark.parametrize("phase", [None, 2])
def test_activating_after_phase1_removal_negotiates_a_new_phase2(net: ShortNet, phase: int | None) -> None:
    """After `ike cmd=remove phase=1` its phase 2 runs on unrefreshed until it expires (the manual);
    activating the definition again must bring up a refreshed phase 2 under the new phase 1, not
    report the orphan as existing (it would expire and leave the tunnel without a phase 2)."""
    net.activate(net.a, net.pa, None)
    net.a.remove(1, [1])
    net.run(0.2)
    if phase == 2:  # the phase 1 first, then phase=2 finds it up
        assert [r["status"] for r in net.activate(net.a, net.pa, 1)] == ["started"]
    out = net.activate(net.a, net.pa, phase)
    got = [(r["phase"], r["status"], r["tunnel"], r["state"]) for r in out]
    assert got == [(1, "exists" if phase == 2 else "started", 2, "established"), (2, "started", 2, "established")]
    recs = {t["tunnel"]: t for t in net.a.listing("2", None, None)["tunnels"]}
    assert (recs[1]["state"], recs[1]["refresh"]) == ("established", False)  # the orphan runs on
    assert (recs[2]["state"], recs[2]["refresh"], recs[2]["phase1_tunnel"]) == ("established", True, 2)
    # No INITIAL_CONTACT with the new phase 1 (the orphan is still ours with this peer), so the
    # peer keeps its half of the orphan too: both run on to their expiry.
    b_p2 = [t for t in net.b.listing("2", None, None)["tunnels"] if t["state"] == "established"]
    assert len(b_p2) == 2, b_p2
    net.run(P2_LIFE - 0.7)  # past the peer's rekey time (a responder's margin is half), before expiry
    recs = {t["tunnel"]: t for t in net.a.listing("2", None, None)["tunnels"]}
    assert (recs[1]["state"], recs[1]["rekeys"]) == ("established", 0), recs[1]  # not refreshed, still up
    # The peer's own rekeys of it were refused: noted on its tunnel, not listed as failed tunnels.
    b_recs = net.b.listing("2", None, None)["tunnels"]
    assert [t["state"] for t in b_recs] == ["established", "established"], b_recs
    if net.version == 2:
        assert "rekey failed" in (b_recs[0]["last_error"] or ""), b_recs[0]
    net.run(1.7)
    recs = {t["tunnel"]: t for t in net.a.listing("2", None, None)["tunnels"]}
    # It ran out, as the manual says: expired here, or deleted by the peer when it expired there.
    assert (recs[1]["state"], recs[1]["rekeys"]) in (("expired", 0), ("deleted", 0)), recs[1]
    assert (recs[2]["state"], recs[2]["refresh"]) == ("established", True) and recs[2]["rekeys"] >= 1
    assert len(net.da.children) == 1 and len(net.db.children) == 1
    # and activating once more finds the refreshed one
    assert [r["status"] for r in net.a.activate(net.pa.by_numbers([1], phase), phase)] == ["exists", "exists"]
