"""The nftables inbound filter's elements and its one-transaction-per-change bookkeeping (the nft
side itself runs in tests/netns/test_dataplane_netns.py)."""

from __future__ import annotations

import logging

import pytest

from ike.dataplane.nftfilter import FilterError, InboundFilter, base_script, elements, table_name_for
from ike.policy import TrafficSelector as T


class Nft:
    """Records the scripts; refuses those containing `refuse` (as nft refuses overlapping intervals)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.scripts: list[str] = []
        self.refuse = refuse

    def __call__(self, script: str) -> tuple[int, str]:
        self.scripts.append(script)
        if self.refuse and self.refuse in script:
            return 1, "Error: Could not process rule: File exists"
        return 0, ""


def test_address_only_pairs_become_cidr_block_pairs() -> None:
    els = elements([T.subnet("198.19.1.0/24")], [T.subnet("198.19.2.0/24"), T.subnet("2001:db8:2::/64")])
    assert els == [("a4_24_24", "198.19.2.0 . 198.19.1.0")]  # no IPv6 local selector: no IPv6 pair
    # a range that is no single CIDR block is cut into blocks
    rng = T(T.host("198.19.2.0").start, T.host("198.19.2.2").start)
    els = elements([T.host("198.19.1.1")], [rng])
    assert els == [("a4_31_32", "198.19.2.0 . 198.19.1.1"), ("a4_32_32", "198.19.2.2 . 198.19.1.1")]


def test_protocol_and_port_selectors_go_to_the_interval_set() -> None:
    els = elements([T.host("198.19.1.1", 6, 80)], [T.subnet("198.19.2.0/24")])
    assert els == [("p4", "198.19.2.0-198.19.2.255 . 198.19.1.1 . 6 . 0-65535 . 80")]
    # ICMP: matched on the protocol alone
    assert elements([T.host("2001:db8:1::1", 58)], [T.host("2001:db8:2::1", 58)]) == [
        ("p6", "2001:db8:2::1 . 2001:db8:1::1 . 58 . 0-65535 . 0-65535")
    ]
    # TCP on one side, UDP on the other: no packet matches both
    assert elements([T.host("198.19.1.1", 6)], [T.host("198.19.2.1", 17)]) == []


def test_base_script_replaces_a_leftover_table_and_lets_ike_esp_and_the_tunnel_pass() -> None:
    s = base_script("ike", "ike0")
    assert s.index("delete table inet ike") < s.index("table inet ike {")
    for rule in (
        'iifname "ike0" accept',
        "meta l4proto esp accept",
        "udp dport { 500, 4500 } accept",
        "packet-too-big",
        "frag frag-off != 0 accept",
    ):
        assert rule in s
    assert "hook input" in s and "hook forward" in s
    assert table_name_for("ike0") == "ike" and table_name_for("tun-x.1") == "ike_tun_x_1"


def test_one_transaction_per_change_and_shared_elements_counted() -> None:
    nft = Nft()
    f = InboundFilter("ike0", run=nft)
    assert f.start() and len(nft.scripts) == 1
    lts, rts = [T.subnet("198.19.1.0/24")], [T.subnet("198.19.2.0/24")]
    f.add(1, lts, rts)
    assert nft.scripts[-1].splitlines() == [
        "add set inet ike a4_24_24 { type ipv4_addr . ipv4_addr; }",
        "add rule inet ike check ip saddr & 255.255.255.0 . ip daddr & 255.255.255.0 @a4_24_24 counter drop",
        "add element inet ike a4_24_24 { 198.19.2.0 . 198.19.1.0 }",
    ]
    f.add(2, lts, rts)  # a rekey: same selectors, already in the set
    assert len(nft.scripts) == 2
    f.add(3, [T.subnet("198.19.3.0/24")], rts)  # the set and its rule exist: elements only
    assert nft.scripts[-1] == "add element inet ike a4_24_24 { 198.19.2.0 . 198.19.3.0 }\n"
    f.remove(1)
    assert len(nft.scripts) == 3  # child 2 still needs the element
    f.remove(2)
    assert nft.scripts[-1] == "delete element inet ike a4_24_24 { 198.19.2.0 . 198.19.1.0 }\n"
    f.remove(2)  # idempotent
    assert len(nft.scripts) == 4
    f.close()
    assert nft.scripts[-1] == "delete table inet ike\n" and not f.active


def test_refused_port_restricted_elements_are_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    nft = Nft(refuse="add element inet ike p4")
    f = InboundFilter("ike0", run=nft)
    f.start()
    with caplog.at_level(logging.WARNING):
        f.add(1, [T.subnet("198.19.1.0/24"), T.host("198.19.1.1", 6, 80)], [T.subnet("198.19.2.0/24")])
    assert f.unfiltered == 1 and "not filtered" in caplog.text
    assert "a4_24_24 { 198.19.2.0 . 198.19.1.0 }" in nft.scripts[-1] and "p4" not in nft.scripts[-1]
    # address elements refused too: the install must fail with nft's words
    g = InboundFilter("ike0", run=Nft(refuse="add element"))
    g.start()
    with pytest.raises(FilterError, match="File exists"):
        g.add(1, [T.subnet("198.19.1.0/24")], [T.subnet("198.19.2.0/24")])
    g.add(2, [T.host("198.19.1.1", 6, 80)], [T.subnet("198.19.2.0/24")])  # only refused p4: not fatal


def test_without_nft_everything_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    nft = Nft(refuse="table")
    f = InboundFilter("ike0", run=nft)
    with caplog.at_level(logging.WARNING):
        assert not f.start()
    assert "NOT dropped" in caplog.text
    f.add(1, [T.subnet("198.19.1.0/24")], [T.subnet("198.19.2.0/24")])
    f.remove(1)
    f.close()
    assert len(nft.scripts) == 1


def test_missing_nft_program_is_named(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    f = InboundFilter("ike0", lib="libnftables-missing.so.1")
    with caplog.at_level(logging.WARNING):
        assert not f.start()
    assert "nft (package nftables) is not installed" in caplog.text
