"""Random operations from both ends (new children, CHILD and IKE rekeys, deletes, liveness checks)
over a lossy wire with a fake clock. Afterwards, on a clean wire, both ends must agree: one IKE SA
with the same SPIs, the same CHILD SA pairs, and no internal error anywhere.

Loss can leave a CHILD SA on one side only (its creation answered, the answer lost, then the IKE SA
it was made under deleted by the peer): such an orphan goes at its next rekey (CHILD_SA_NOT_FOUND)
or expiry, so the quiet period outlasts the CHILD SA lifetime."""

from __future__ import annotations

import random

import pytest

from ike.proto.api import EngineSettings, PacketDropped
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard

from .harness import Net, mirror1, mirror2, phase1, phase2

LOSS = float(__import__("os").environ.get("CHAOS_LOSS", "0.2"))


def consistent(net: Net) -> None:
    i, r = net.i.engine, net.r.engine
    assert i is not None and r is not None
    assert i.is_established() and r.is_established(), (net.i.events[-20:], net.r.events[-20:])
    si, sr = i.sa, r.sa
    assert si is not None and sr is not None and (si.spi_i, si.spi_r) == (sr.spi_i, sr.spi_r)
    pairs_i = {(c.spi_in, c.spi_out) for c in i.child_sas() if c.state.value != "deleted"}
    pairs_r = {(c.spi_out, c.spi_in) for c in r.child_sas() if c.state.value != "deleted"}
    assert pairs_i == pairs_r, (pairs_i, pairs_r)


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("CHAOS_SEEDS", "12"))))
def test_random_operations_converge(seed: int) -> None:
    rnd = random.Random(seed)
    lossy = [True]
    p1 = phase1(dpd_delay_s=7, lifetime_s=400)
    kids = [phase2(n, local=f"198.18.{10 + n}.0/24", remote=f"198.18.{20 + n}.0/24", pfs_group=rnd.choice([0, 31]),
                   lifetime_s=150, name=f"c{n}") for n in range(1, 4)]  # fmt: skip
    s = EngineSettings(retransmit_timeout_s=0.5, retransmit_tries=6, extra={"ikev2_cookie_guard": CookieGuard()})
    r_policies = StaticPolicies([mirror1(p1)], [mirror2(k) for k in kids])
    net = Net(p1, kids[:1], StaticPolicies([p1], kids), r_policies, settings=s,
              drop=lambda n, dg: lossy[0] and rnd.random() < LOSS)  # fmt: skip
    net.run(30)
    for _ in range(25):
        side = rnd.choice([net.i, net.r])
        eng = side.engine
        if eng is None or not eng.is_established():
            net.run(5)
            continue
        live = [c for c in eng.child_sas() if c.state.value == "installed"]
        op = rnd.choice(["start", "rekey_child", "rekey_ike", "delete_child", "wait"])
        if op == "start":
            k = rnd.choice(kids)
            eng.start_child(k if side is net.i else mirror2(k), net.now)
        elif op == "rekey_child" and live:
            eng.rekey_child(rnd.choice(live).child_id, net.now)
        elif op == "rekey_ike":
            eng.rekey_ike(net.now)
        elif op == "delete_child" and len(live) > 1:
            eng.delete_child(rnd.choice(live).child_id, net.now)
        net.run(rnd.choice([0.0, 0.3, 2.0, 10.0]))
    lossy[0] = False
    net.run(400)
    internal = [e for e in net.i.events + net.r.events if isinstance(e, PacketDropped) and "internal" in e.reason]
    assert not internal, internal
    consistent(net)
