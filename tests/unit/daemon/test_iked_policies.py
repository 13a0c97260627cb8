"""The daemon's indexed view of the tunnel definitions."""

from __future__ import annotations

import pytest

from ike.daemon.policies import IndexedPolicies, LookupError_
from ike.policy import (
    DataManagementPolicy,
    EspProposal,
    Group,
    Identity,
    IdType,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)

KM = KeyManagementPolicy("km", proposals=(IkeProposal("aes-cbc", 128, "sha2-256", "sha2-256", 14),))
DM = DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 128, None),))


def p1(n: int, local: str, remote: str, rid: str, autostart: bool = False) -> Phase1Tunnel:
    ids = Identity.parse(local), Identity.parse(rid)
    return Phase1Tunnel(n, f"p1-{n}", *ids, local, remote, KM, autostart=autostart)


def p2(n: int, under: int, lts: str, rts: str, autostart: bool = False) -> Phase2Tunnel:
    return Phase2Tunnel(n, f"p2-{n}", under, TrafficSelector.parse(lts), TrafficSelector.parse(rts), DM, autostart)


@pytest.fixture
def pol() -> IndexedPolicies:
    return IndexedPolicies(
        [
            p1(1, "198.18.0.1", "198.18.0.2", "198.18.0.2"),
            p1(2, "198.18.0.1", "0.0.0.0", "road@example.net", autostart=True),
            p1(3, "198.18.0.1", "198.18.0.3", "gw3.example.net"),
        ],
        [
            p2(11, 1, "198.19.1.0/24", "198.19.2.0/24"),
            p2(12, 1, "198.19.1.0/24", "198.19.3.0,255.255.255.0", autostart=True),
            p2(31, 3, "198.19.1.1", "198.19.9.1-198.19.9.9"),
        ],
        [Group("all-peers", ("198.18.0.2", "gw3.example.net"))],
    )


def test_by_address_exact_before_wildcard(pol: IndexedPolicies) -> None:
    assert [t.number for t in pol.phase1_by_address("198.18.0.1", "198.18.0.2")] == [1, 2]
    assert [t.number for t in pol.phase1_by_address("198.18.0.1", "198.18.0.77")] == [2]
    assert pol.phase1_by_address("198.18.0.9", "198.18.0.2") == []


def test_by_identity_respects_addresses(pol: IndexedPolicies) -> None:
    road = Identity(IdType.USER_FQDN, "road@example.net")
    assert pol.phase1_by_identity("198.18.0.1", "198.18.0.50", road).number == 2  # type: ignore[union-attr]
    assert pol.phase1_by_identity("198.18.0.1", "198.18.0.50", Identity(IdType.FQDN, "GW3.example.net")) is None
    gw3 = pol.phase1_by_identity("198.18.0.1", "198.18.0.3", Identity(IdType.FQDN, "GW3.example.net"))
    assert gw3 is not None and gw3.number == 3


def test_phase2_for_overlap(pol: IndexedPolicies) -> None:
    t1 = pol.p1_by_number[1]
    found = pol.phase2_for(t1, [TrafficSelector.parse("198.19.1.5")], [TrafficSelector.parse("198.19.3.0/25")])
    assert found is not None and found.number == 12
    assert pol.phase2_for(t1, [TrafficSelector.parse("198.19.7.5")], [TrafficSelector.parse("198.19.3.0/25")]) is None


def test_phase2_definitions_are_what_we_offer_on_a_mismatch(pol: IndexedPolicies) -> None:
    assert [t.number for t in pol.phase2_definitions(pol.p1_by_number[1])] == [11, 12]
    assert pol.phase2_definitions(pol.p1_by_number[2]) == ()


def test_phase2_for_prefers_exact_then_narrowest() -> None:
    pol = IndexedPolicies(
        [p1(1, "198.18.0.1", "198.18.0.2", "198.18.0.2")],
        [
            p2(11, 1, "198.19.1.0/24", "198.19.2.0/24"),
            Phase2Tunnel(
                12,
                "icmp",
                1,
                TrafficSelector.host("198.19.1.1", protocol=1),
                TrafficSelector.host("198.19.2.1", protocol=1),
                DM,
            ),
        ],
    )
    t1 = pol.p1_by_number[1]
    host = pol.phase2_for(
        t1, [TrafficSelector.host("198.19.1.1", protocol=1)], [TrafficSelector.host("198.19.2.1", protocol=1)]
    )
    assert host is not None and host.number == 12
    sub = pol.phase2_for(t1, [TrafficSelector.parse("198.19.1.0/24")], [TrafficSelector.parse("198.19.2.0/24")])
    assert sub is not None and sub.number == 11
    inner = pol.phase2_for(t1, [TrafficSelector.parse("198.19.1.7")], [TrafficSelector.parse("198.19.2.0/25")])
    assert inner is not None and inner.number == 11


def test_autostart_brings_phase1_of_phase2(pol: IndexedPolicies) -> None:
    got = {t.phase1.number: [c.number for c in t.phase2] for t in pol.autostart()}
    assert got == {2: [], 1: [12]}


def test_numbers_phase1_and_phase2(pol: IndexedPolicies) -> None:
    assert [t.phase1.number for t in pol.by_numbers([1, 3], 1)] == [1, 3]
    t = pol.by_numbers([11, 12, 31], 2)
    assert [(x.phase1.number, [c.number for c in x.phase2]) for x in t] == [(1, [11, 12]), (3, [31])]
    with pytest.raises(LookupError_, match="no phase 2 tunnel number 5"):
        pol.by_numbers([5], None)
    # without phase=, a phase 1 number (no phase 2 has it) brings its phase 2 tunnels
    t = pol.by_numbers([3], None)
    assert [(x.phase1.number, [c.number for c in x.phase2]) for x in t] == [(3, [31])]
    with pytest.raises(LookupError_, match="no phase 2 tunnel number 3"):
        pol.by_numbers([3], 2)
    with pytest.raises(LookupError_, match="no phase 1 tunnel number 9"):
        pol.by_numbers([9], 1)


def test_remid_forms(pol: IndexedPolicies) -> None:
    # phase 1 ID
    assert [(t.phase1.number, len(t.phase2)) for t in pol.by_remote_id("198.18.0.2", None)] == [(1, 2)]
    assert [(t.phase1.number, len(t.phase2)) for t in pol.by_remote_id("198.18.0.2", 1)] == [(1, 0)]
    # phase 2 IDs: subnet as id,mask, range as start,end
    t = pol.by_remote_id("198.19.3.0,255.255.255.0", 2)
    assert [(x.phase1.number, [c.number for c in x.phase2]) for x in t] == [(1, [12])]
    t = pol.by_remote_id("198.19.9.1,198.19.9.9", 2)
    assert [(x.phase1.number, [c.number for c in x.phase2]) for x in t] == [(3, [31])]
    # group: one tunnel per member
    assert [t.phase1.number for t in pol.by_remote_id("all-peers", None)] == [1, 3]
    with pytest.raises(LookupError_, match="matches no phase 1 ID, phase 2 ID or group"):
        pol.by_remote_id("nobody.example", None)


@pytest.mark.parametrize(
    ("groups", "start", "cycle"),
    [
        ([Group("g", ("g",))], "g", "g -> g"),
        ([Group("ga", ("198.18.0.2", "gb")), Group("gb", ("ga",))], "ga", "ga -> gb -> ga"),
        # the cycle further down is named from where it closes, not from the group asked for
        ([Group("top", ("gx",)), Group("gx", ("gy",)), Group("gy", ("gx",))], "top", "gx -> gy -> gx"),
    ],
)
def test_group_cycles_are_refused_naming_the_cycle(groups: list[Group], start: str, cycle: str) -> None:
    pol = IndexedPolicies([p1(1, "198.18.0.1", "198.18.0.2", "198.18.0.2")], [], groups)
    with pytest.raises(LookupError_) as ei:
        pol.by_remote_id(start, None)
    assert f"({cycle})" in str(ei.value) and "contains itself" in str(ei.value)


def test_nested_groups_without_a_cycle_still_resolve(pol: IndexedPolicies) -> None:
    # the same group reached twice (a diamond) is not a cycle
    pol.groups.update(
        {"left": Group("left", ("all-peers",)), "right": Group("right", ("all-peers",))},
    )
    pol.groups["both"] = Group("both", ("left", "right"))
    assert [t.phase1.number for t in pol.by_remote_id("both", None)] == [1, 3, 1, 3]


def test_ipaddr_and_names(pol: IndexedPolicies) -> None:
    t = pol.by_addresses("198.18.0.1", "198.18.0.2", 2)
    assert [(x.phase1.number, [c.number for c in x.phase2]) for x in t] == [(1, [11, 12])]
    with pytest.raises(LookupError_, match="no tunnel in the database between"):
        pol.by_addresses("198.18.0.9", "198.18.0.99", None)  # (198.18.0.1 has a wildcard-remote one)
    assert [x.phase1.number for x in pol.by_names(["p1-3"], 1)] == [3]
    assert [c.number for x in pol.by_names(["p2-11"], 2) for c in x.phase2] == [11]
    with pytest.raises(LookupError_, match="no phase 2 tunnel named 'zz'"):
        pol.by_names(["zz"], 2)


def wild_pol() -> IndexedPolicies:
    return IndexedPolicies(
        [
            p1(1, "198.18.0.1", "198.18.0.2", "198.18.0.2"),
            p1(2, "198.18.0.1", "0.0.0.0", "road@example.net"),  # answers anyone; ipaddr= starts it
            # no local address
            Phase1Tunnel(3, "p1-3", Identity.parse("me.example"), Identity.parse("198.18.0.3"), "", "198.18.0.3", KM),
        ],
        [
            p2(11, 1, "198.19.1.0/24", "198.19.2.0/24"),
            p2(12, 1, "198.18.0.1", "198.18.0.2"),  # host to host, the outer addresses
            p2(21, 2, "198.19.1.0/24", "198.19.5.0/24"),
            p2(31, 3, "198.19.1.0/24", "198.19.3.0/24"),
        ],
    )


def test_ipaddr_falls_back_to_wildcard_definitions_started_toward_the_addresses() -> None:
    pol = wild_pol()
    # a wildcard remote: the definition is started toward the address given
    (t,) = pol.by_addresses("198.18.0.1", "198.18.0.7", 2)
    assert (t.phase1.number, t.phase1.local_addr, t.phase1.remote_addr, t.toward) == (
        2,
        "198.18.0.1",
        "198.18.0.7",
        "198.18.0.7",
    )
    assert [c.number for c in t.phase2] == [21]
    assert pol.p1_by_number[2].remote_addr == "0.0.0.0"  # the database's view is left as it is
    # no local address: started from the one given
    (t,) = pol.by_addresses("198.18.0.5", "198.18.0.3", 1)
    assert (t.phase1.number, t.phase1.local_addr, t.phase1.remote_addr, t.toward) == (
        3,
        "198.18.0.5",
        "198.18.0.3",
        None,
    )
    # the exact pair before any wildcard, and its definition unchanged
    (t,) = pol.by_addresses("198.18.0.1", "198.18.0.2", 1)
    assert t.phase1 is pol.p1_by_number[1] and t.toward is None
    # spellings of the same address find it too
    assert pol.by_addresses("198.18.0.1", " 198.18.0.2", 1)[0].phase1.number == 1
    with pytest.raises(LookupError_, match="both must be IP addresses"):
        pol.by_addresses("198.18.0.1", "gw.example", 1)


def test_ipaddr_phase2_prefers_the_host_to_host_definition() -> None:
    pol = wild_pol()
    (t,) = pol.by_addresses("198.18.0.1", "198.18.0.2", 2)
    assert [c.number for c in t.phase2] == [12]
    # without phase=2 (both phases), or when no phase 2 is exactly those hosts: all of them
    (t,) = pol.by_addresses("198.18.0.1", "198.18.0.2", None)
    assert [c.number for c in t.phase2] == [11, 12]
    (t,) = pol.by_addresses("198.18.0.1", "198.18.0.7", 2)
    assert [c.number for c in t.phase2] == [21]


def test_address_normalisation_is_memoised_but_bounded(pol: IndexedPolicies) -> None:
    """Every new negotiation normalises its addresses; the memo must keep answers exact (the
    uncompressed IPv6 form of a definition's address still finds it) and must not grow with the
    source addresses peers choose."""
    from ike.daemon import policies

    assert [p.number for p in pol.phase1_by_address("198.18.0.1", "198.18.0.2")][:1] == [1]
    for i in range(policies._NORM_CACHE_MAX + 100):
        policies._norm(f"2001:db8::{i:x}")
    assert len(policies._NORM_CACHE) <= policies._NORM_CACHE_MAX
    assert policies._norm("2001:0db8:0000::0001") == "2001:db8::1"
    assert policies._norm(" any ") == "" and policies._norm("0.0.0.0") == ""
    assert [p.number for p in pol.phase1_by_address("198.18.0.1", "198.18.0.2")][:1] == [1]
