"""Netlink for the data planes, built by hand with `struct` (pyroute2 is slow to import and has no XFRM
messages): the generic message and attribute framing, one blocking request/ack socket, and the few
rtnetlink messages the userspace data plane needs (routes into its table, the local addresses).

Layouts are those of <linux/netlink.h> and <linux/rtnetlink.h> in host byte order.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ike.dataplane.base import DataPlaneError

NETLINK_ROUTE = 0
NETLINK_XFRM = 6

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100  # NEW requests reuse the GET bits
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the original request is not echoed, only its header
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended ack attributes follow
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTA_DST = 1
RTA_OIF = 4
RTA_PREFSRC = 7
RTA_TABLE = 15
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RT_TABLE_UNSPEC = 0
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV6_IFADDR = 9

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
NLA = struct.Struct("=HH")  # length, type
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")


def nla(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(data)
    return NLA.pack(n, kind) + data + b"\0" * (-n % 4)


def nlmsg(kind: int, flags: int, payload: bytes, seq: int = 0) -> bytes:
    return NLMSGHDR.pack(16 + len(payload), kind, flags, seq, 0) + payload


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes by type (the nested and byte-order flag bits cleared); the last of a repeated one."""
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        n, kind = NLA.unpack_from(data, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = data[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each message in one datagram from the kernel."""
    off = 0
    while off + 16 <= len(data):
        n, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
        if n < 16:
            return
        yield kind, flags, seq, data[off + 16 : off + n]
        off += (n + 3) & ~3


def parse_error(flags: int, body: bytes) -> tuple[int, str]:
    """(errno, the kernel's extended ack message or "") of an NLMSG_ERROR body; errno 0 is an ack."""
    if len(body) < 4:
        return 0, ""
    err = -_I32.unpack_from(body)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS and len(body) >= 20:
        # after the error: the request's header, and its payload too unless capped
        at = 20 if flags & NLM_F_CAPPED else 4 + NLMSGHDR.unpack_from(body, 4)[0]
        msg = parse_attrs(body[at:]).get(NLMSGERR_ATTR_MSG)
        if msg:
            text = msg.rstrip(b"\0").decode(errors="replace")
    return err, text


class NetlinkError(DataPlaneError):
    """A negative ack: `what` was being done, the kernel said `errno` (and maybe why, `detail`)."""

    def __init__(self, errno_: int, what: str, detail: str = "") -> None:
        self.errno = errno_
        self.detail = detail
        super().__init__(f"{what}: {os.strerror(errno_)} (errno {errno_}){f': {detail}' if detail else ''}")


class NetlinkSocket:
    """A blocking netlink request/ack socket. Requests are few (installs and removals) and the kernel
    answers them before `send` returns, so they are made synchronously; the timeout only guards
    against a kernel that never answers."""

    timeout = 5.0

    def __init__(self, protocol: int, name: str) -> None:
        self.name = name
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        except OSError as e:
            raise DataPlaneError(f"cannot open {name} netlink socket: {e.strerror}") from e
        try:
            self.sock.bind((0, 0))
        except OSError as e:
            self.sock.close()
            raise DataPlaneError(f"cannot bind {name} netlink socket: {e.strerror}") from e
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # short acks, with the kernel's reason (4.3, 4.12)
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        self.sock.settimeout(self.timeout)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send one message (its sequence number is set here) and collect the replies (type, body)
        up to the ack, error or end of dump. A negative ack raises NetlinkError naming `what`."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF or 1
        req_flags = NLMSGHDR.unpack_from(msg)[2]
        msg = msg[:8] + _U32.pack(seq) + msg[12:]
        try:
            self.sock.send(msg)
        except OSError as e:
            raise NetlinkError(e.errno or 0, what) from e
        replies: list[tuple[int, bytes]] = []
        want_ack = bool(req_flags & NLM_F_ACK)
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError as e:
                raise DataPlaneError(f"{what}: no answer from the kernel ({self.name} netlink)") from e
            except OSError as e:
                raise NetlinkError(e.errno or 0, what) from e
            for kind, flags, rseq, body in messages(data):
                if rseq != seq:
                    continue  # the late answer to an earlier request
                if kind == NLMSG_ERROR:
                    err, detail = parse_error(flags, body)
                    if err:
                        raise NetlinkError(err, what, detail)
                    return replies
                if kind == NLMSG_DONE:
                    if len(body) >= 4 and (err := -_I32.unpack_from(body)[0]) > 0:  # a dump that failed
                        raise NetlinkError(err, what)
                    return replies
                replies.append((kind, body))
                if not want_ack and not flags & NLM_F_MULTI:
                    return replies


# -- rtnetlink -------------------------------------------------------------------------------------


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _route_body(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, table: int, new: bool) -> bytes:
    # iproute2's defaults for `ip route replace PREFIX dev DEV` (boot protocol, link scope: no
    # gateway) and `ip route del` (scope "nowhere" matches any); a table above 255 goes in RTA_TABLE
    rtm = RTMSG.pack(
        _family(prefix.version),
        prefix.prefixlen,
        0,
        0,
        table if table < 256 else RT_TABLE_UNSPEC,
        RTPROT_BOOT if new else 0,
        RT_SCOPE_LINK if new else RT_SCOPE_NOWHERE,
        RTN_UNICAST if new else 0,
        0,
    )
    return rtm + nla(RTA_TABLE, _U32.pack(table)) + nla(RTA_DST, prefix.network_address.packed)


def newroute_msg(
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network,
    ifindex: int,
    table: int,
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    seq: int = 0,
) -> bytes:
    """RTM_NEWROUTE, create or replace: `prefix` through the device `ifindex` in `table`, with the
    preferred source address `src` if given (`ip route replace PREFIX dev DEV table T [src S]`)."""
    body = _route_body(prefix, table, True) + nla(RTA_OIF, _U32.pack(ifindex))
    if src is not None:
        body += nla(RTA_PREFSRC, src.packed)
    return nlmsg(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body, seq)


def delroute_msg(
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, ifindex: int, table: int, seq: int = 0
) -> bytes:
    """RTM_DELROUTE of `prefix` through `ifindex` in `table` (`ip route del PREFIX dev DEV table T`)."""
    body = _route_body(prefix, table, False) + nla(RTA_OIF, _U32.pack(ifindex))
    return nlmsg(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, body, seq)


def getaddr_msg(seq: int = 0) -> bytes:
    """RTM_GETADDR dump of every address of every family (`ip addr show`)."""
    return nlmsg(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), seq)


@dataclass(frozen=True)
class IfAddr:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int
    scope: int
    index: int


def parse_addr(body: bytes) -> IfAddr | None:
    """An RTM_NEWADDR body: the interface's own address (IFA_LOCAL, else IFA_ADDRESS, as `ip` shows
    it), or None for another family or a truncated message."""
    if len(body) < IFADDRMSG.size:
        return None
    fam, plen, _flags, scope, index = IFADDRMSG.unpack_from(body)
    size = 4 if fam == socket.AF_INET else 16 if fam == socket.AF_INET6 else 0
    if not size:
        return None
    attrs = parse_attrs(body[IFADDRMSG.size :])
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != size:
        return None
    return IfAddr(ipaddress.ip_address(raw), plen, scope, index)


class AddressWatch:
    """The host's addresses, dumped once and again only after the kernel announced a change: a
    non-blocking socket in the address groups collects the announcements, and `addresses` drains
    it first (the kernel queues them before the change's own request returns, so none is missed).
    An overrun of that socket (ENOBUFS) also means "dump again"."""

    def __init__(self, rt: NetlinkSocket) -> None:
        self._rt = rt
        self._cache: list[IfAddr] | None = None
        self.dumps = 0
        try:
            mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        except OSError as e:
            raise DataPlaneError(f"cannot open a netlink socket to watch addresses: {e.strerror}") from e
        try:
            mon.bind((0, (1 << (RTNLGRP_IPV4_IFADDR - 1)) | (1 << (RTNLGRP_IPV6_IFADDR - 1))))
        except OSError as e:
            mon.close()
            raise DataPlaneError(f"cannot watch address changes over netlink: {e.strerror}") from e
        mon.setblocking(False)
        self._mon = mon

    def close(self) -> None:
        self._mon.close()

    def _changed(self) -> bool:
        changed = False
        while True:
            try:
                data = self._mon.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS: announcements were lost
                changed = True
                continue
            if any(k in (RTM_NEWADDR, RTM_DELADDR) for k, _f, _s, _b in messages(data)):
                changed = True

    def addresses(self) -> list[IfAddr]:
        if self._changed() or self._cache is None:
            # drained before the dump: a change during the dump shows up next time
            replies = self._rt.request(getaddr_msg(), "reading the local addresses")
            self._cache = [a for kind, body in replies if kind == RTM_NEWADDR and (a := parse_addr(body)) is not None]
            self.dumps += 1
        return self._cache
