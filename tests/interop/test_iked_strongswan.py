"""Our iked against strongSwan's charon, each in its own namespace, configured from one parameter set.

charon here uses kernel-libipsec, which always encapsulates ESP in UDP 4500 and so makes charon report
a NAT; our side must follow (port float, ESP-in-UDP). Each test checks both ends' view of the SAs,
that inside traffic really flows, and that only ESP crosses the wire.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness import require, require_root, require_tools
from harness.aixvpn import EspT, IkeT, Tunnel
from harness.iked import Iked
from harness.netns import Host, capture, two_hosts
from harness.strongswan import Charon, Child, Conn, available

PSK = "interop test key 0123456789"


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "ping", "tcpdump", "unshare")
    ok, why = available()
    require(ok, why)


@dataclass
class Pair:
    a: Host  # ours
    b: Host  # strongSwan
    ours: Iked
    peer: Charon
    v6: bool

    def addrs(self) -> tuple[str, str, str, str]:
        """(our outer, peer outer, our inner, peer inner)"""
        if self.v6:
            assert self.a.outer6 and self.b.outer6 and self.a.inner6 and self.b.inner6
            return self.a.outer6, self.b.outer6, self.a.inner6, self.b.inner6
        return self.a.outer4, self.b.outer4, self.a.inner4, self.b.inner4

    def tunnel(self, **kw: Any) -> Tunnel:
        oa, ob, _, _ = self.addrs()
        nets = (self.a.inner_net6, self.b.inner_net6) if self.v6 else (self.a.inner_net4, self.b.inner_net4)
        return Tunnel(oa, ob, kw.pop("psk", PSK), nets[0], nets[1], **kw)

    def configure(self, t: Tunnel, peer_t: Tunnel | None = None, start_action: str = "none") -> None:
        """Our side gets `t`; strongSwan gets `peer_t` (default: `t` seen from the other end)."""
        self.ours.put(t.xml())
        p = peer_t or t.swapped()
        self.peer.load(
            Conn(
                version=p.version,
                aggressive=p.mode == "aggressive",
                local_addrs=[p.local_gw],
                remote_addrs=[p.remote_gw],
                local_id=p.local_gw,
                remote_id=p.remote_gw,
                psk=p.psk,
                proposals=p.ss_ike_proposals(),
                children=[
                    Child(
                        local_ts=[p.local_net or "dynamic"],
                        remote_ts=[p.remote_net or "dynamic"],
                        esp_proposals=p.ss_esp_proposals(),
                        mode=p.encapsulation.lower(),
                        start_action=start_action,
                    )
                ],
            )
        )

    def our_tunnels(self) -> list[dict[str, Any]]:
        out = json.loads(self.ours.ike("cmd=list", "format=json").stdout)
        tunnels: list[dict[str, Any]] = out["tunnels"]
        return tunnels

    def check_traffic(self, spis: set[int]) -> None:
        oa, ob, ia, ib = self.addrs()
        with capture(self.a, "veth0", "not arp and not icmp6") as cap:
            ping = self.a.ping(ib, count=4, src=ia)
        assert ping.returncode == 0, ping.stdout + "\n" + self.ours.log(40)
        data = [p for p in cap.between(oa, ob) if p.kind not in ("ike", "natt-keepalive")]
        assert len(data) == 8, cap.packets
        assert {p.kind for p in data} == {"esp-in-udp"}
        assert {p.spi for p in data} == spis
        assert not [p for p in cap.packets if {p.src, p.dst} & {ia, ib}], "inside addresses seen in clear"


@pytest.fixture(params=[False], ids=["v4"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    v6 = bool(request.param)
    with two_hosts(v6=v6) as (a, b), Iked(a) as ours, Charon(b) as peer:
        yield Pair(a, b, ours, peer, v6)


CASES = {
    "ikev2-gcm": {},
    "ikev2-cbc-sha256-pfs-modp2048": {
        "ike": [IkeT("aes-cbc", 128, "hmac-sha2-256", 14, "hmac-sha2-256-128")],
        "esp": [EspT("aes-cbc", 256, "hmac-sha2-256-128")],
        "pfs": 14,
    },
    "ikev2-chacha-x25519": {
        "ike": [IkeT("chacha20-poly1305", 256, "hmac-sha2-256", 31, None)],
        "esp": [EspT("chacha20-poly1305", 256)],
    },
    "ikev1-main-pfs": {
        "version": 1,
        "ike": [IkeT("aes-cbc", 256, "hmac-sha2-256", 14, "hmac-sha2-256-128")],
        "esp": [EspT("aes-cbc", 128, "hmac-sha2-256-128")],
        "pfs": 14,
    },
    "ikev1-aggressive": {
        "version": 1,
        "mode": "aggressive",
        "ike": [IkeT("aes-cbc", 128, "hmac-sha1", 14, "hmac-sha1-96")],
        "esp": [EspT("aes-gcm-16", 128)],
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_we_initiate(pair: Pair, case: str) -> None:
    t = pair.tunnel(**CASES[case])
    pair.configure(t)
    pair.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait")
    sa = pair.peer.wait_established("ike", "net", timeout=10)
    assert sa.version == t.version and not sa.initiator
    child = sa.child("net")
    assert child is not None
    [ours] = pair.our_tunnels()
    assert ours["state"] == "established" and ours["role"] == "i" and ours["version"] == t.version
    [p2] = ours["phase2"]
    # the same SPIs at both ends, crossed over
    assert (int(p2["spi_in"], 16), int(p2["spi_out"], 16)) == (child.spi_out, child.spi_in)
    assert int(ours["spi_i"], 16) == sa.initiator_spi and int(ours["spi_r"], 16) == sa.responder_spi
    if t.pfs and t.version == 1:  # IKEv2's first child comes with IKE_AUTH: no DH of its own (RFC 7296 1.2)
        assert child.dh_group == "MODP_2048"
    pair.check_traffic({child.spi_in, child.spi_out})

    after = pair.peer.list_sas("ike")[0].child("net")
    assert after is not None and after.packets_in >= 4 and after.packets_out >= 4

    pair.ours.ike("cmd=remove", "all")
    pair.peer.wait_no_sas(timeout=10)  # our delete reached charon
    _, _, ia, ib = pair.addrs()
    assert pair.a.ping(ib, count=1, src=ia, timeout=5).returncode != 0


@pytest.mark.parametrize("pair", [True], ids=["v6"], indirect=True)
def test_we_initiate_ipv6(pair: Pair) -> None:
    pair.configure(pair.tunnel())
    pair.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait")
    sa = pair.peer.wait_established("ike", "net", timeout=10)
    child = sa.child("net")
    assert child is not None and sa.remote_host == pair.a.outer6
    pair.check_traffic({child.spi_in, child.spi_out})


@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1-main"])
def test_strongswan_initiates(pair: Pair, version: int) -> None:
    kw: dict[str, Any] = {"version": version}
    if version == 1:
        kw["ike"] = [IkeT("aes-cbc", 256, "hmac-sha2-256", 14, "hmac-sha2-256-128")]
    t = pair.tunnel(**kw)
    pair.configure(t)
    pair.peer.initiate("net", "ike", timeout=15)
    sa = pair.peer.wait_established("ike", "net")
    assert sa.initiator
    child = sa.child("net")
    assert child is not None
    [ours] = pair.our_tunnels()
    assert ours["role"] == "r" and ours["state"] == "established"
    pair.check_traffic({child.spi_in, child.spi_out})
    pair.peer.terminate(ike="ike")
    pair.peer.wait_no_sas()


def test_proposal_mismatch_fails_clearly(pair: Pair) -> None:
    t = pair.tunnel(ike=[IkeT("aes-cbc", 128, "hmac-sha2-256", 14, "hmac-sha2-256-128")])
    peer_t = pair.tunnel(ike=[IkeT("aes-cbc", 256, "hmac-sha2-512", 21, "hmac-sha2-512-256")]).swapped()
    pair.configure(t, peer_t)
    r = pair.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait", check=False, timeout=60)
    assert r.returncode != 0
    text = (r.stdout + r.stderr).lower()
    assert "proposal" in text, text
    assert not [s for s in pair.peer.list_sas() if s.state == "ESTABLISHED"]
    assert pair.ours.alive()


def test_wrong_psk_fails_clearly(pair: Pair) -> None:
    t = pair.tunnel()
    pair.configure(t, pair.tunnel(psk="some other key").swapped())
    r = pair.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait", check=False, timeout=60)
    assert r.returncode != 0
    text = (r.stdout + r.stderr).lower()
    assert "auth" in text, text
    assert pair.ours.alive()
