"""The strongSwan harness proven against itself: two charons in two namespaces. If these pass, a
failing interop test against our daemon points at the daemon, not at the harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import require, require_root, require_tools
from harness.netns import Host, capture, two_hosts
from harness.pki import make_pki
from harness.strongswan import Charon, Child, Conn, StrongswanError, available

PSK = "harness test key, not a secret"


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "ping", "tcpdump", "unshare")
    ok, why = available()
    require(ok, why)


def _conn(me: Host, peer: Host, v6: bool = False, **kw: object) -> Conn:
    outer = (me.outer6, peer.outer6) if v6 else (me.outer4, peer.outer4)
    nets = (me.inner_net6, peer.inner_net6) if v6 else (me.inner_net4, peer.inner_net4)
    assert outer[0] and outer[1] and nets[0] and nets[1]
    child_kw = {k[6:]: kw.pop(k) for k in list(kw) if k.startswith("child_")}
    params: dict[str, object] = {
        "local_addrs": [outer[0]],
        "remote_addrs": [outer[1]],
        "local_id": outer[0],
        "remote_id": outer[1],
        "psk": PSK,
        "children": [Child(local_ts=[nets[0]], remote_ts=[nets[1]], **child_kw)],  # type: ignore[arg-type]
    }
    params.update(kw)
    return Conn(**params)  # type: ignore[arg-type]


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Host, Host, Charon, Charon]]:
    v6 = getattr(request, "param", False)
    with two_hosts(v6=v6) as (a, b), Charon(a) as left, Charon(b) as right:
        yield a, b, left, right


@pytest.mark.parametrize("pair", [False, True], ids=["v4", "v6"], indirect=True)
def test_ikev2_psk_tunnel_carries_only_esp_in_udp(pair: tuple[Host, Host, Charon, Charon]) -> None:
    a, b, left, right = pair
    v6 = a.outer6 is not None
    left.load(_conn(a, b, v6))
    right.load(_conn(b, a, v6))
    src, dst = (a.inner6, b.inner6) if v6 else (a.inner4, b.inner4)
    outer_a, outer_b = (a.outer6, b.outer6) if v6 else (a.outer4, b.outer4)
    assert src and dst and outer_a and outer_b

    assert a.ping(dst, count=1, src=src, timeout=5).returncode != 0, "inside reachable without a tunnel"
    left.initiate("net", "ike")
    sa = left.wait_established("ike", "net")
    peer_sa = right.wait_established("ike", "net")
    assert sa.version == 2 and sa.initiator and not peer_sa.initiator
    assert sa.initiator_spi == peer_sa.initiator_spi and sa.responder_spi == peer_sa.responder_spi
    child, peer_child = sa.child("net"), peer_sa.child("net")
    assert child and peer_child
    assert (child.spi_in, child.spi_out) == (peer_child.spi_out, peer_child.spi_in)
    assert child.encr_alg == "AES_GCM_16" and child.encap

    with capture(a, "veth0", "not arp") as cap:
        ping = a.ping(dst, count=5, src=src)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # 5 requests and 5 replies, each ESP in UDP 4500 with the negotiated SPIs (IKE may chat alongside)
    data = [p for p in cap.between(outer_a, outer_b) if p.kind not in ("ike", "natt-keepalive")]
    assert len(data) == 10, cap.packets
    assert {p.kind for p in data} == {"esp-in-udp"}
    assert {(p.sport, p.dport) for p in data} == {(4500, 4500)}
    assert {p.spi for p in data} == {child.spi_in, child.spi_out}
    # and nothing in clear: no packet anywhere on the wire carries an inside address
    assert not [p for p in cap.packets if src in (p.src, p.dst) or dst in (p.src, p.dst)]
    after = left.list_sas("ike")[0].child("net")
    assert after and after.packets_out >= 5 and after.packets_in >= 5

    left.terminate(ike="ike")
    left.wait_no_sas()
    right.wait_no_sas()
    assert a.ping(dst, count=1, src=src, timeout=5).returncode != 0, "traffic still flows after delete"


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_ikev1_psk(pair: tuple[Host, Host, Charon, Charon], aggressive: bool) -> None:
    a, b, left, right = pair
    kw = {
        "version": 1,
        "aggressive": aggressive,
        "proposals": ["aes128-sha256-modp2048"],
        "child_esp_proposals": ["aes128-sha256-modp2048"],
    }
    left.load(_conn(a, b, **kw))
    right.load(_conn(b, a, **kw))
    left.initiate("net", "ike")
    sa = left.wait_established("ike", "net")
    assert sa.version == 1 and sa.dh_group == "MODP_2048"
    child = sa.child("net")
    assert child and child.integ_alg == "HMAC_SHA2_256_128" and child.dh_group == "MODP_2048"
    assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0


def test_certificates(pair: tuple[Host, Host, Charon, Charon], tmp_path: Path) -> None:
    a, b, left, right = pair
    pki = make_pki(tmp_path, {"gw-a": a.outer4, "gw-b": "gw-b.example"})
    ca, cb = pki.hosts["gw-a"], pki.hosts["gw-b"]
    left.load(
        _conn(
            a,
            b,
            auth="pubkey",
            psk=None,
            local_id=ca.dn,
            remote_id=cb.san,
            local_cert=ca.cert,
            local_key=ca.key,
            cacerts=[pki.ca_cert],
        )
    )
    right.load(
        _conn(
            b,
            a,
            auth="pubkey",
            psk=None,
            local_id=cb.san,
            remote_id=ca.dn,
            local_cert=cb.cert,
            local_key=cb.key,
            cacerts=[pki.ca_cert],
        )
    )
    left.initiate("net", "ike")
    sa = left.wait_established("ike", "net")
    assert sa.remote_id == "gw-b.example" and sa.local_id == ca.dn
    assert a.ping(b.inner4, count=2, src=a.inner4).returncode == 0


def test_wrong_psk_fails_and_says_so(pair: tuple[Host, Host, Charon, Charon]) -> None:
    a, b, left, right = pair
    left.load(_conn(a, b))
    right.load(_conn(b, a, psk="a different key"))
    with pytest.raises(StrongswanError, match="initiate"):
        left.initiate("net", "ike", timeout=10)
    assert not [s for s in right.list_sas() if s.state == "ESTABLISHED"]
    assert "AUTHENTICATION_FAILED" in left.log() or "authentication" in left.log().lower()
