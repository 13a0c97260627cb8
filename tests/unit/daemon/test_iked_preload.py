"""iked preloads what a negotiation needs at start: the first activation after it starts must not
wait for imports. cryptography's OpenSSL backend, imported inside the first X25519 key, was 3-6 ms
on each side of the first tunnel; the engines themselves had been about a second."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter that imports only what iked does: this test process (and the test helpers,
# with their certificate tools) has long imported everything.
SCRIPT = """
import asyncio, sys
from ike.daemon.engines import RealEngines
from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.policy import (Credentials, DataManagementPolicy, EspProposal, Identity, IkeProposal,
                        KeyManagementPolicy, Phase1Tunnel, Phase2Tunnel, TrafficSelector)

A, B = "198.18.0.1", "198.18.0.2"
version, group = int(sys.argv[1]), int(sys.argv[2])

def defs(me, peer, lnet, rnet):
    prf = "hmac-sha2-256"
    km = KeyManagementPolicy("km", version=version, proposals=(IkeProposal("aes-cbc", 128, prf + "-128", prf, group),))
    dm = DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 128, None),))
    p1 = Phase1Tunnel(1, "gw", Identity.parse(me), Identity.parse(peer), me, peer, km, Credentials(psk=b"k" * 32))
    p2 = Phase2Tunnel(1, "net", 1, TrafficSelector.subnet(lnet), TrafficSelector.subnet(rnet), dm)
    return IndexedPolicies([p1], [p2], [])

loop = asyncio.new_event_loop()
pa, pb = defs(A, B, "198.19.1.0/24", "198.19.2.0/24"), defs(B, A, "198.19.2.0/24", "198.19.1.0/24")
by_addr = {}
send = lambda dg: loop.call_soon(by_addr[dg.remote[0]].receive, dg.data, dg.remote, dg.local)
fa, fb = RealEngines(pa), RealEngines(pb)
a = TunnelManager(loop, pa, fa, send, NoneDataPlane())
b = TunnelManager(loop, pb, fb, send, NoneDataPlane())
by_addr.update({A: a, B: b})
fa.preload()
fb.preload()
before = set(sys.modules)

async def go():
    res = a.activate(pa.by_numbers([1], None), None)
    await asyncio.wait_for(asyncio.gather(*a.waiters_for(res, None)), 10)

loop.run_until_complete(go())
print(sorted({e.state for e in a.p2.values()}), sorted(set(sys.modules) - before))
"""


@pytest.mark.parametrize(("version", "group"), [(2, 31), (2, 19), (1, 31)], ids=["v2-x25519", "v2-ecp256", "v1-x25519"])
def test_the_first_negotiation_after_preload_imports_nothing(version: int, group: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(version), str(group)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['established'] []", out.stdout
