"""Short lifetimes against strongSwan: CHILD SAs (and for IKEv2 the IKE SA) are rekeyed while a
continuous ping runs each way, and at most a few packets are lost.

Lifetimes are a few seconds to tens of seconds with strongSwan's jitter off (rand_time = 0), chosen so
that the side named by the case rekeys first and the test ends before anything expires unrekeyed:

- ikev2-ours: we initiate; our CHILD lifetime 12 s (we rekey it at 90 %, ~10.8 s); charon's IKE
  rekey_time 13 s (charon rekeys the IKE SA, the CHILD SA then lives on under the new one).
- ikev2-peer: charon initiates and rekeys the CHILD SA at 7 s; our IKE lifetime 14 s (as the
  responder we rekey the IKE SA at 95 %, ~13.3 s).
- ikev1-ours / ikev1-peer: quick mode SAs are rekeyed by the side that made them (ours at
  85-90 % of 12 s; charon at rekey_time 7 s). In ikev1-ours we also renew phase 1 first (a new
  main mode at 85-90 % of 10 s, then a Delete for the old one; charon adopts the quick mode SA),
  so our quick mode rekey runs under the new phase 1.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from interop_pair import SUITES, Pair, interop_pair, prerequisites

from harness.netns import Host, capture


@dataclass(frozen=True)
class Case:
    version: int
    initiator: str  # "ours" | "peer"
    suite: str
    window_s: float  # how long the pings run
    ours: dict[str, Any] = field(default_factory=dict)  # ike_lifetime_s / esp_lifetime_s
    ss_ike: dict[str, str] = field(default_factory=dict)  # charon connection options
    ss_child: dict[str, str] = field(default_factory=dict)  # charon child options
    child_rekeys: int = 1  # at least this many CHILD SA generations after the first
    ike_rekey: bool = False


LONG_IKE = {"rekey_time": "300s", "over_time": "30s", "rand_time": "0"}
LONG_CHILD = {"rekey_time": "300s", "life_time": "330s", "rand_time": "0"}

CASES = {
    "ikev2-ours": Case(
        2,
        "ours",
        "gcm128-x25519",
        15.0,
        ours={"ike_lifetime_s": 60, "esp_lifetime_s": 12},
        ss_ike={"rekey_time": "13s", "over_time": "10s", "rand_time": "0"},
        ss_child={"rekey_time": "30s", "life_time": "40s", "rand_time": "0"},
        ike_rekey=True,
    ),
    "ikev2-peer": Case(
        2,
        "peer",
        "cbc256-sha256-modp2048",
        15.0,
        ours={"ike_lifetime_s": 14, "esp_lifetime_s": 30},
        ss_ike=LONG_IKE,
        ss_child={"rekey_time": "7s", "life_time": "20s", "rand_time": "0"},
        ike_rekey=True,
    ),
    "ikev1-ours": Case(
        1,
        "ours",
        "cbc256-sha256-modp2048+pfs",
        12.5,
        ours={"ike_lifetime_s": 10, "esp_lifetime_s": 12},
        ss_ike={"rekey_time": "0", "reauth_time": "0"},
        ss_child={"rekey_time": "30s", "life_time": "40s", "rand_time": "0"},
        ike_rekey=True,
    ),
    "ikev1-peer": Case(
        1,
        "peer",
        "cbc128-sha256-ecp256+gcm128",
        10.0,
        ours={"esp_lifetime_s": 30},
        ss_ike=LONG_IKE,
        ss_child={"rekey_time": "7s", "life_time": "20s", "rand_time": "0"},
    ),
}


@pytest.fixture
def pair() -> Iterator[Pair]:
    prerequisites()
    with interop_pair() as p:
        yield p


def _start_ping(src_host: Host, src: str, dst: str, seconds: float) -> subprocess.Popen[str]:
    n = int(seconds / 0.1)
    return src_host.popen(
        ["ping", "-n", "-q", "-i", "0.1", "-W", "1", "-c", str(n), "-I", src, dst],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _lost(proc: subprocess.Popen[str], seconds: float) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=seconds + 15)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)) - int(m.group(2)), out


@pytest.mark.parametrize("name", list(CASES))
def test_rekeys_keep_traffic_flowing(pair: Pair, name: str) -> None:
    case = CASES[name]
    t = pair.tunnel(version=case.version, **SUITES[(case.version, case.suite)], **case.ours)
    pair.configure(t, options=case.ss_ike, child_options=case.ss_child)
    _, child0 = pair.establish(case.initiator, case.version)
    ike0 = pair.peer.list_sas("ike")[0]
    a, b = pair.a, pair.b

    with capture(a, "veth0", "not arp and not ip6") as cap:
        pings = [_start_ping(a, a.inner4, b.inner4, case.window_s), _start_ping(b, b.inner4, a.inner4, case.window_s)]
        results = [_lost(p, case.window_s) for p in pings]
    ours_log = pair.ours.log(80)
    for lost, out in results:
        assert lost <= 3, f"{lost} pings lost across the rekeys:\n{out}\n{ours_log}\n{pair.peer.log(80)}"

    sas = [s for s in pair.peer.list_sas() if s.state == "ESTABLISHED"]
    assert len(sas) == 1, sas
    ike1 = sas[0]
    child1 = ike1.child("net")
    assert child1 is not None, ike1
    assert len([c for c in ike1.children if c.state == "INSTALLED"]) == 1, ike1.children
    assert child1.spi_in != child0.spi_in and child1.spi_out != child0.spi_out
    if case.ike_rekey:
        assert (ike1.initiator_spi, ike1.responder_spi) != (ike0.initiator_spi, ike0.responder_spi), ours_log

    # The wire: only IKE and ESP-in-UDP; ESP with more than one generation of SPIs, all of them
    # ones charon had at some point (the first and the current ones at least).
    data = [p for p in cap.packets if p.kind not in ("ike", "natt-keepalive")]
    assert {p.kind for p in data} == {"esp-in-udp"}, {p.kind for p in data}
    spis = {p.spi for p in data}
    assert {child0.spi_in, child0.spi_out, child1.spi_in, child1.spi_out} <= spis, (spis, child0, child1)
    assert len(spis) >= 2 * (1 + case.child_rekeys)

    # Our side agrees: one live tunnel, its SPIs those charon has now, and rekeys counted.
    tunnels = pair.our_tunnels()
    live = [x for x in tunnels if x["state"] == "established"]
    assert len(live) == 1, tunnels
    rec: dict[str, Any] = live[0]
    if case.ike_rekey:
        assert int(rec["spi_i"], 16) == ike1.initiator_spi and int(rec["spi_r"], 16) == ike1.responder_spi, rec
    p2 = [x for x in rec["phase2"] if x["state"] == "established"]
    assert [(int(x["spi_in"], 16), int(x["spi_out"], 16)) for x in p2] == [(child1.spi_out, child1.spi_in)], rec
    assert pair.ours.alive()
