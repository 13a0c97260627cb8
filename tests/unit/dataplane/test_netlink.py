"""rtnetlink messages against byte layouts written out by hand from <linux/netlink.h> and
<linux/rtnetlink.h> (struct nlmsghdr, rtmsg, ifaddrmsg, rtattr; x86-64 host byte order), parsing
of the kernel's answers, and one real request/dump through this host's kernel (read-only)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys

import pytest

from ike.dataplane.base import DataPlaneError
from ike.dataplane.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_REQUEST,
    RTM_GETROUTE,
    AddressWatch,
    NetlinkError,
    NetlinkSocket,
    delroute_msg,
    getaddr_msg,
    messages,
    newroute_msg,
    nlmsg,
    parse_addr,
    parse_attrs,
    parse_error,
)

little = pytest.mark.skipif(sys.byteorder != "little", reason="the expected bytes are written little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


V4 = ipaddress.ip_network("198.19.2.0/24")
V6 = ipaddress.ip_network("2001:db8:2::/64")


@little
def test_newroute_v4_table_above_255_with_prefsrc() -> None:
    msg = newroute_msg(V4, 7, 4501, ipaddress.ip_address("198.19.1.1"), seq=9)
    expect = h(
        # nlmsghdr: len 60, RTM_NEWROUTE 24, REQUEST|ACK|REPLACE|CREATE 0x505, seq 9, pid 0
        "3c000000 1800 0505 09000000 00000000"
        # rtmsg: AF_INET, dst_len 24, src_len 0, tos 0, table UNSPEC (>255), RTPROT_BOOT, RT_SCOPE_LINK,
        # RTN_UNICAST, flags 0
        "02 18 00 00 00 03 fd 01 00000000"
        "0800 0f00 95110000"  # RTA_TABLE 4501
        "0800 0100 c6130200"  # RTA_DST 198.19.2.0
        "0800 0400 07000000"  # RTA_OIF 7
        "0800 0700 c6130101"  # RTA_PREFSRC 198.19.1.1
    )
    assert msg == expect


@little
def test_newroute_v6_small_table_without_prefsrc() -> None:
    msg = newroute_msg(V6, 3, 100)
    expect = h(
        "40000000 1800 0505 00000000 00000000"  # length 64
        "0a 40 00 00 64 03 fd 01 00000000"  # AF_INET6, /64, table 100 in the header too
        "0800 0f00 64000000"
        "1400 0100 20010db8000200000000000000000000"  # RTA_DST, 16 bytes
        "0800 0400 03000000"
    )
    assert msg == expect


@little
def test_delroute() -> None:
    expect = h(
        "34000000 1900 0500 00000000 00000000"  # length 52, RTM_DELROUTE 25, REQUEST|ACK
        "02 18 00 00 00 00 ff 00 00000000"  # no protocol, RT_SCOPE_NOWHERE (any scope), no type
        "0800 0f00 95110000"
        "0800 0100 c6130200"
        "0800 0400 07000000"
    )
    assert delroute_msg(V4, 7, 4501) == expect


@little
def test_getaddr_dump() -> None:
    # length 24, RTM_GETADDR 22, REQUEST|DUMP (ROOT|MATCH) 0x301; ifaddrmsg all zero (AF_UNSPEC)
    assert getaddr_msg(seq=2) == h("18000000 1600 0103 02000000 00000000 0000000000000000")


@little
def test_parse_addr_prefers_ifa_local_and_reads_v6() -> None:
    # a point-to-point IPv4 address: IFA_ADDRESS is the peer, IFA_LOCAL our own (as `ip` shows it)
    body = h(
        "02 20 80 00 05000000"  # ifaddrmsg: AF_INET, /32, IFA_F_PERMANENT, scope universe, index 5
        "0800 0100 c6120002"  # IFA_ADDRESS 198.18.0.2
        "0800 0200 c6120001"  # IFA_LOCAL 198.18.0.1
        "0a00 0300 7665746830000000"  # IFA_LABEL "veth0\0", padded
        "0800 0800 80000000"  # IFA_FLAGS
    )
    a = parse_addr(body)
    assert a is not None
    assert (a.address, a.prefixlen, a.scope, a.index) == (ipaddress.ip_address("198.18.0.1"), 32, 0, 5)
    v6 = parse_addr(h("0a 40 80 fd 02000000 1400 0100 fe800000000000000000000000000001"))
    assert v6 is not None and (str(v6.address), v6.scope, v6.index) == ("fe80::1", 253, 2)
    assert parse_addr(h("11 00 00 00 02000000")) is None  # AF_PACKET: not an IP address
    assert parse_addr(h("02 18 00 00")) is None  # truncated
    assert parse_addr(h("02 18 00 00 01000000 0800 0100 c612")) is None  # address attribute cut short


@little
def test_parse_error_with_and_without_the_echoed_request() -> None:
    req = nlmsg(24, 0x505, bytes(12))  # 28 bytes
    tlv = h("1c00 0100") + b"Invalid prefsrc address\0"  # NLMSGERR_ATTR_MSG, 4 + 24 bytes
    capped = h("eaffffff") + req[:16] + tlv  # -22, header only (NLM_F_CAPPED)
    assert parse_error(0x300, capped) == (22, "Invalid prefsrc address")
    full = h("eaffffff") + req + tlv
    assert parse_error(0x200, full) == (22, "Invalid prefsrc address")
    assert parse_error(0x100, h("eaffffff") + req[:16]) == (22, "")  # no TLVs
    assert parse_error(0, h("00000000") + req) == (0, "")  # an ack


def test_messages_and_attrs_walk_padding() -> None:
    a = nlmsg(20, 2, bytes(8) + h("0500 0300 41000000") + h("0800 0100 01020304"), seq=1)
    b = nlmsg(3, 2, h("00000000"), seq=1)
    out = list(messages(a + b))
    assert [(k, f, s) for k, f, s, _ in out] == [(20, 2, 1), (3, 2, 1)]
    assert parse_attrs(out[0][3][8:]) == {3: b"A", 1: h("01020304")}
    assert list(messages(h("0a000000 0000"))) == []  # shorter than a header


def test_the_kernel_refusal_names_what_and_why() -> None:
    """A read-only request the kernel refuses (a route lookup with a truncated header): NetlinkError,
    a DataPlaneError, with the errno text and the kernel's extended ack message."""
    s = NetlinkSocket(NETLINK_ROUTE, "a route")
    try:
        with pytest.raises(NetlinkError) as ei:
            s.request(nlmsg(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, b"\x02\0\0\0"), "looking up a route")
    finally:
        s.close()
    assert isinstance(ei.value, DataPlaneError)
    assert ei.value.errno == 22
    assert str(ei.value).startswith("looking up a route: Invalid argument (errno 22)")
    assert ei.value.detail  # e.g. "ipv4: Invalid header for route get request"


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (iproute2) to compare with")
def test_address_dump_matches_ip_and_is_cached() -> None:
    s = NetlinkSocket(NETLINK_ROUTE, "a route")
    w = AddressWatch(s)
    try:
        got = {(str(a.address), a.prefixlen, a.index) for a in w.addresses()}
        again = w.addresses()
        dumps = w.dumps
    finally:
        w.close()
        s.close()
    shown = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True).stdout)
    want = {(a["local"], a["prefixlen"], link["ifindex"]) for link in shown for a in link.get("addr_info", [])}
    assert got == want
    assert {(str(a.address), a.prefixlen, a.index) for a in again} == got
    assert dumps == 1  # nothing changed between the two calls: one dump
