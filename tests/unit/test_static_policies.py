"""StaticPolicies: the in-memory PolicySource the engine tests, interop drivers and benchmarks share."""

from __future__ import annotations

from dataclasses import replace

from ike import policy as P
from ike.proto.static_policies import StaticPolicies

_POL = P.KeyManagementPolicy("p", 2, "main", (P.IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31),))
_P2POL = P.DataManagementPolicy("q", "esp", (P.EspProposal("aes-gcm-16", 256, None),))


def p1(number: int, local: str, remote: str, remote_id: str = "peer.example") -> P.Phase1Tunnel:
    return P.Phase1Tunnel(
        number, f"t{number}", P.Identity.parse("me.example"), P.Identity.parse(remote_id), local, remote, _POL,
        P.Credentials(psk=b"k" * 16),
    )  # fmt: skip


def p2(number: int, under: int, local: str, remote: str) -> P.Phase2Tunnel:
    return P.Phase2Tunnel(
        number, f"c{number}", under, P.TrafficSelector.parse(local), P.TrafficSelector.parse(remote), _P2POL
    )


def ts(text: str) -> P.TrafficSelector:
    return P.TrafficSelector.parse(text)


def test_exact_addresses_come_before_wildcards() -> None:
    any4, exact, any6, other = (
        p1(1, "198.18.0.1", "0.0.0.0"), p1(2, "198.18.0.1", "198.18.0.2"), p1(3, "::", "::"),
        p1(4, "198.18.0.1", "198.18.0.9"),
    )  # fmt: skip
    pol = StaticPolicies([any4, exact, any6, other])
    assert list(pol.phase1_by_address("198.18.0.1", "198.18.0.2")) == [exact, any4, any6]
    assert list(pol.phase1_by_address("198.18.0.7", "198.18.0.2")) == [any6]


def test_ipv6_spellings_are_one_address() -> None:
    t = p1(1, "2001:db8::1", "2001:DB8:0::2")
    pol = StaticPolicies([t])
    assert list(pol.phase1_by_address("2001:db8:0:0::1", "2001:db8::2")) == [t]


def test_identity_picks_among_the_address_matches() -> None:
    a, b = p1(1, "198.18.0.1", "0.0.0.0", "a.example"), p1(2, "198.18.0.1", "0.0.0.0", "b.example")
    pol = StaticPolicies([a, b])
    assert pol.phase1_by_identity("198.18.0.1", "198.18.0.5", P.Identity.parse("B.example")) == b
    assert pol.phase1_by_identity("198.18.0.1", "198.18.0.5", P.Identity.parse("c.example")) is None
    assert pol.phase1_by_identity("198.18.0.3", "198.18.0.5", P.Identity.parse("a.example")) is None


def test_phase2_equal_selectors_win_over_an_earlier_overlap() -> None:
    t = p1(1, "198.18.0.1", "198.18.0.2")
    wide, host, elsewhere = (
        p2(1, 1, "198.18.10.0/24", "198.18.20.0/24"), p2(2, 1, "198.18.10.5/32", "198.18.20.0/24"),
        p2(3, 2, "198.18.10.5/32", "198.18.20.0/24"),
    )  # fmt: skip
    pol = StaticPolicies([t], [elsewhere, wide, host])
    assert pol.phase2_for(t, [ts("198.18.10.5/32")], [ts("198.18.20.0/24")]) == host
    assert pol.phase2_for(t, [ts("198.18.10.7/32")], [ts("198.18.20.1/32")]) == wide
    assert pol.phase2_for(t, [ts("198.18.11.0/24")], [ts("198.18.20.0/24")]) is None


def test_add_and_replace_update_the_index() -> None:
    t = p1(1, "198.18.0.1", "198.18.0.2")
    pol = StaticPolicies([t])
    assert pol.phase2_for(t, [ts("198.18.10.0/24")], [ts("198.18.20.0/24")]) is None
    c = p2(1, 1, "198.18.10.0/24", "198.18.20.0/24")
    pol.add(c)
    assert pol.phase2_for(t, [ts("198.18.10.0/24")], [ts("198.18.20.0/24")]) == c
    moved = replace(t, remote_addr="198.18.0.3")
    pol.replace(t, moved)
    assert pol.phase1s == (moved,) and pol.phase2s == (c,)
    assert list(pol.phase1_by_address("198.18.0.1", "198.18.0.2")) == []
    assert list(pol.phase1_by_address("198.18.0.1", "198.18.0.3")) == [moved]
