"""Dead peer detection against strongSwan: charon is killed (SIGKILL, so it says nothing), and iked,
with a 2 s DPD delay and short retransmissions (--retransmit-timeout 0.5 --retransmit-tries 2:
checks at +0, +0.5, +1.5, given up at +3.5 s), must list the tunnel as gone within
delay + retransmissions (+ slack for a busy machine), take its SAs out of the data plane, and go on
running and answering `ike`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from interop_pair import SUITES, Pair, interop_pair, prerequisites, wait_for

DPD_DELAY = 2
RETRANSMIT = ["--retransmit-timeout", "0.5", "--retransmit-tries", "2"]
GIVE_UP_S = 0.5 + 1.0 + 2.0
SLACK_S = 3.0

CASES = {  # version, mode, suite, who initiates
    "ikev2-initiator": (2, "main", "gcm128-x25519", "ours"),
    "ikev2-responder": (2, "main", "cbc256-sha256-modp2048", "peer"),
    "ikev1-main-initiator": (1, "main", "cbc128-sha256-ecp256+gcm128", "ours"),
    "ikev1-aggr-responder": (1, "aggressive", "cbc256-sha256-modp2048+pfs", "peer"),
}


@pytest.fixture
def pair() -> Iterator[Pair]:
    prerequisites()
    with interop_pair(iked_args=RETRANSMIT) as p:
        yield p


def _live(tunnels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tunnels:
        if t["state"] in ("established", "negotiating"):
            out.append(t)
        out += [x for x in t.get("phase2", []) if x["state"] in ("established", "negotiating")]
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_dpd_notices_killed_peer(pair: Pair, name: str) -> None:
    version, mode, suite, initiator = CASES[name]
    t = pair.tunnel(version=version, mode=mode, dpd_delay_s=DPD_DELAY, dpd_action="clear", **SUITES[(version, suite)])
    pair.configure(t)
    _, child = pair.establish(initiator, version)
    pair.check_traffic(child, count=2)

    assert pair.peer.proc is not None
    os.killpg(pair.peer.proc.pid, signal.SIGKILL)
    pair.peer.proc.wait(5)
    killed = time.monotonic()

    limit = DPD_DELAY + GIVE_UP_S + SLACK_S
    tunnels = wait_for(
        lambda: (lambda ts: ts if not _live(ts) else None)(pair.our_tunnels()) or None,
        limit,
        lambda: f"still live {limit:.1f}s after charon was killed: {pair.our_tunnels()}\n{pair.ours.log(40)}",
        step=0.25,
    )
    took = time.monotonic() - killed
    # not before DPD could have noticed: the delay and the retransmissions had to run
    assert took >= DPD_DELAY * 0.5, (took, tunnels)
    # ended tunnels stay listed with their reason (docs/daemon.md)
    [p1] = [x for x in tunnels if x.get("phase", 1) == 1]
    assert p1["state"] in ("failed", "deleted"), p1
    assert "dpd" in str(p1["last_error"]).lower() or "unreachable" in str(p1["last_error"]).lower(), p1

    assert pair.ours.alive(), pair.ours.log(40)
    r = pair.ours.ike("cmd=list")  # the daemon still answers, and the listing says what happened
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:2] == ["1", str(p1["tunnel"])]]
    assert rows and rows[0][3] in ("Deleted", "Failed"), r.stdout
    assert "dpd" in r.stdout.lower() or "unreachable" in r.stdout.lower(), r.stdout
    a, b = pair.a, pair.b
    assert a.ping(b.inner4, count=1, src=a.inner4, timeout=5).returncode != 0
