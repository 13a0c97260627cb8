"""Outbound SPD (longest prefix, newest first, protocol/port selectors) and the inbound selector check."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ike.dataplane.spd import SelectorSet, Spd, cidr_blocks, flow_of
from ike.policy import TrafficSelector as TS


def v4(src: str, dst: str, l4: object = None) -> bytes:
    return bytes(IP(src=src, dst=dst) / (l4 if l4 is not None else UDP(sport=1, dport=2)) / Raw(b"x"))


def test_flow_of_v4_v6_and_fragments() -> None:
    assert flow_of(v4("198.19.1.1", "198.19.2.1", TCP(sport=1234, dport=80)))[3:] == (6, 1234, 80)
    assert flow_of(v4("198.19.1.1", "198.19.2.1", ICMP(type=8, code=0)))[3:] == (1, 8, 0)
    pkt6 = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=5, dport=6))
    f = flow_of(pkt6)
    assert f is not None and f[0] == 6 and f[3:] == (17, 5, 6)
    frag = bytes(IP(src="198.19.1.1", dst="198.19.2.1", frag=10, proto=6) / Raw(b"y" * 20))
    assert flow_of(frag)[3:] == (6, 0, 0)
    assert flow_of(b"\x45") is None


def test_cidr_blocks_of_a_range() -> None:
    assert [(b[1]) for b in cidr_blocks(TS.range("198.19.2.1", "198.19.2.6"))] == [32, 31, 31, 32]


def test_longest_prefix_wins_and_src_must_match() -> None:
    spd: Spd[str] = Spd()
    spd.add(1, [TS.subnet("198.19.1.0/24")], [TS.subnet("198.19.0.0/16")], "wide")
    spd.add(2, [TS.subnet("198.19.1.0/24")], [TS.subnet("198.19.2.0/24")], "narrow")
    assert spd.lookup(v4("198.19.1.5", "198.19.2.9")) == "narrow"
    assert spd.lookup(v4("198.19.1.5", "198.19.7.9")) == "wide"
    assert spd.lookup(v4("198.18.0.1", "198.19.2.9")) is None  # source outside the local selector
    assert spd.lookup(v4("198.19.1.5", "198.18.2.9")) is None
    spd.remove(2)
    assert spd.lookup(v4("198.19.1.5", "198.19.2.9")) == "wide"  # the cache was dropped with the entry
    spd.remove(1)
    assert spd.lookup(v4("198.19.1.5", "198.19.2.9")) is None and len(spd) == 0


def test_newest_entry_with_same_selectors_wins_until_removed() -> None:
    """A rekeyed child is installed before the old one goes: traffic moves to the new SA at once."""
    spd: Spd[str] = Spd()
    sel = ([TS.subnet("198.19.1.0/24")], [TS.subnet("198.19.2.0/24")])
    spd.add(1, *sel, "old")
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1")) == "old"
    spd.add(2, *sel, "new")
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1")) == "new"
    spd.remove(2)
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1")) == "old"


def test_protocol_and_port_selectors() -> None:
    spd: Spd[str] = Spd()
    spd.add(1, [TS.subnet("198.19.1.0/24")], [TS.subnet("198.19.2.0/24", protocol=6, port=443)], "https")
    spd.add(2, [TS.subnet("198.19.1.0/24", protocol=17)], [TS.subnet("198.19.2.0/24")], "udp")
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1", TCP(dport=443))) == "https"
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1", TCP(dport=80))) is None
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1", UDP(dport=53))) == "udp"
    assert spd.lookup(v4("198.19.1.1", "198.19.2.1", ICMP())) is None


def test_ipv6_and_host_selectors() -> None:
    spd: Spd[str] = Spd()
    spd.add(1, [TS.host("2001:db8::1")], [TS.host("2001:db8::2")], "h2h6")
    spd.add(2, [TS.host("198.18.0.1")], [TS.host("198.18.0.2")], "h2h4")
    assert spd.lookup(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP())) == "h2h6"
    assert spd.lookup(bytes(IPv6(src="2001:db8::1", dst="2001:db8::3") / UDP())) is None
    assert spd.lookup(v4("198.18.0.1", "198.18.0.2")) == "h2h4"


def test_lookup_cost_does_not_grow_with_tunnel_count() -> None:
    """1000 tunnels: the lookup walks prefix lengths, not entries (checked by counting matches tried)."""
    spd: Spd[int] = Spd()
    for i in range(1000):
        spd.add(i, [TS.subnet("198.19.0.0/24")], [TS.subnet(f"198.18.{i % 250}.{(i // 250) * 64}/26")], i)
    assert spd.lookup(v4("198.19.0.9", "198.18.3.70")) == 253
    assert len(spd._plens[4]) == 1  # one prefix length in use: one dict probe per packet


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [("198.19.2.7", "198.19.1.1", True), ("198.19.3.7", "198.19.1.1", False), ("198.19.2.7", "198.19.9.1", False)],
)
def test_inbound_selector_check(src: str, dst: str, ok: bool) -> None:
    sel = SelectorSet([TS.subnet("198.19.1.0/24")], [TS.subnet("198.19.2.0/24")])
    assert sel.allows(v4(src, dst)) is ok
    assert sel.allows(v4(src, dst)) is ok  # and again from the cache


def test_inbound_selector_with_ports() -> None:
    sel = SelectorSet([TS.subnet("198.19.1.0/24", protocol=6, port=22)], [TS.subnet("198.19.2.0/24")])
    assert sel.allows(v4("198.19.2.1", "198.19.1.1", TCP(sport=4000, dport=22)))
    assert not sel.allows(v4("198.19.2.1", "198.19.1.1", TCP(sport=4000, dport=23)))
    assert not sel.allows(v4("198.19.2.1", "198.19.1.1", UDP(sport=4000, dport=22)))
