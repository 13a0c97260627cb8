"""Linux kernel IPsec (XFRM) over netlink: SAs and policies, for kernels built with ESP.

Messages are built here with `struct` from <linux/xfrm.h> (pyroute2 has no XFRM messages). Per child:
two SAs (in, out) and, per pair of selector blocks, an out policy and in + fwd policies whose template
names the SA by outer addresses and reqid. Selector ranges become CIDR blocks (XFRM selectors are
prefixes); port ranges become port/mask blocks.

Kernel ESP-in-UDP needs every port-4500 socket to carry UDP_ENCAP_ESPINUDP (`attach_udp_socket`, or
`decap_udp_socket` for the wildcard sockets the daemon keeps reading), and
IKE sockets need a per-socket bypass policy (`bypass_socket`) so that a host-to-host tunnel does not
swallow its own IKE packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ike.dataplane.base import (
    AcquireCallback,
    ChildCounters,
    DataPlaneError,
    ExpiryCallback,
    IkeHandler,
    UdpSender,
    kb_left,
)
from ike.dataplane.esp import Lifetime
from ike.dataplane.netlink import (
    NETLINK_XFRM,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkSocket,
    messages,
    nla,
    nlmsg,
)
from ike.policy import TrafficSelector
from ike.proto.api import Address, ChildSaEstablished
from ike.proto.transforms import ENCR, INTEG

log = logging.getLogger("ike.dataplane.xfrm")

XFRM_MSG_NEWSA = 16
XFRM_MSG_DELSA = 17
XFRM_MSG_GETSA = 18
XFRM_MSG_NEWPOLICY = 19
XFRM_MSG_DELPOLICY = 20
XFRM_MSG_GETPOLICY = 21
XFRM_MSG_EXPIRE = 24
XFRM_MSG_UPDPOLICY = 25
XFRMNLGRP_EXPIRE = 2

XFRMA_ALG_CRYPT = 2
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_SRCADDR = 13
XFRMA_ALG_AEAD = 18
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_REPLAY_ESN_VAL = 23

XFRM_MODE_TUNNEL = 1
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ESN = 128
XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
XFRM_POLICY_ALLOW = 0
XFRM_INF = 0xFFFFFFFFFFFFFFFF
IPPROTO_ESP = 50
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35

# kernel crypto API names
KERNEL_ENCR = {
    "aes-gcm-16": "rfc4106(gcm(aes))",
    "chacha20-poly1305": "rfc7539esp(chacha20,poly1305)",
    "aes-cbc": "cbc(aes)",
    "3des-cbc": "cbc(des3_ede)",
}
KERNEL_INTEG = {
    "hmac-sha1-96": "hmac(sha1)",
    "hmac-sha2-256-128": "hmac(sha256)",
    "hmac-sha2-384-192": "hmac(sha384)",
    "hmac-sha2-512-256": "hmac(sha512)",
    "hmac-md5-96": "hmac(md5)",
}

# struct xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask (be16), family, prefixlen_d,
# prefixlen_s, proto, 3 pad, ifindex, user
_SELECTOR = struct.Struct("=16s16s2s2s2s2sHBBB3xiI")
_LIFETIME_CFG = struct.Struct("=8Q")
_LIFETIME_CUR = struct.Struct("=4Q")
_ID = struct.Struct("=16s4sB3x")  # daddr, spi (be32), proto
# struct xfrm_usersa_info (224 bytes)
_USERSA_INFO = struct.Struct("=56s24s16s64s32s12sIIHBBB7x")
# struct xfrm_userpolicy_info (168 bytes)
_USERPOLICY_INFO = struct.Struct("=56s64s32sIIBBBB4x")
_USERPOLICY_ID = struct.Struct("=56sIB3x")
_USERSA_ID = struct.Struct("=16s4sHB1x")
# struct xfrm_user_tmpl (64 bytes)
_USER_TMPL = struct.Struct("=24sH2x16sIBBB1xIII")
_ENCAP_TMPL = struct.Struct("=H2s2s2x16s")
_REPLAY_ESN = struct.Struct("=IIIIII")

assert _SELECTOR.size == 56 and _USERSA_INFO.size == 224 and _USERPOLICY_INFO.size == 168
assert _USER_TMPL.size == 64 and _USERPOLICY_ID.size == 64 and _USERSA_ID.size == 24 and _ENCAP_TMPL.size == 24


def _addr(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    a = ipaddress.ip_address(ip)
    return (socket.AF_INET if a.version == 4 else socket.AF_INET6), a.packed.ljust(16, b"\0")


def lifetime_cfg(
    soft_bytes: int = 0,
    hard_bytes: int = 0,
    soft_s: int = 0,
    hard_s: int = 0,
    soft_packets: int = 0,
    hard_packets: int = 0,
) -> bytes:
    # soft_byte, hard_byte, soft_packet, hard_packet, soft_add_expires_seconds, hard_add, soft_use, hard_use
    return _LIFETIME_CFG.pack(
        soft_bytes or XFRM_INF,
        hard_bytes or XFRM_INF,
        min(soft_packets, XFRM_INF) or XFRM_INF,
        min(hard_packets, XFRM_INF) or XFRM_INF,
        soft_s,
        hard_s,
        0,
        0,
    )


def selector(
    family: int,
    dst: tuple[bytes, int] | None = None,
    src: tuple[bytes, int] | None = None,
    proto: int = 0,
    dport: tuple[int, int] = (0, 0),
    sport: tuple[int, int] = (0, 0),
) -> bytes:
    """`dst`/`src`: (16-byte address, prefix length); ports: (port, mask)."""
    d, dl = dst or (bytes(16), 0)
    s, sl = src or (bytes(16), 0)
    return _SELECTOR.pack(
        d,
        s,
        dport[0].to_bytes(2, "big"),
        dport[1].to_bytes(2, "big"),
        sport[0].to_bytes(2, "big"),
        sport[1].to_bytes(2, "big"),
        family,
        dl,
        sl,
        proto,
        0,
        0,
    )


@dataclass(frozen=True)
class SaSpec:
    """One SA as the kernel sees it."""

    src: str
    dst: str
    spi: bytes
    encr: str
    keylen: int
    enc_key: bytes
    integ: str | None
    integ_key: bytes
    reqid: int
    esn: bool = False
    replay_window: int = 32
    encap: tuple[int, int] | None = None  # (sport, dport) for ESP-in-UDP
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_s: int = 0
    hard_s: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


def newsa_msg(sa: SaSpec, seq: int = 0) -> bytes:
    """XFRM_MSG_NEWSA for `sa` (tunnel mode ESP)."""
    fam, daddr = _addr(sa.dst)
    _, saddr = _addr(sa.src)
    e = ENCR.get(sa.encr)
    if e is None or sa.encr not in KERNEL_ENCR:
        raise DataPlaneError(f"the kernel data plane has no mapping for {sa.encr!r}")
    flags = XFRM_STATE_AF_UNSPEC  # inner family may differ from the outer one
    use_esn_attr = sa.esn or sa.replay_window > 32
    if sa.esn:
        flags |= XFRM_STATE_ESN
    info = _USERSA_INFO.pack(
        selector(0),  # any inner family (with XFRM_STATE_AF_UNSPEC): policies decide what enters
        _ID.pack(daddr, sa.spi, IPPROTO_ESP),
        saddr,
        lifetime_cfg(sa.soft_bytes, sa.hard_bytes, sa.soft_s, sa.hard_s, sa.soft_packets, sa.hard_packets),
        bytes(32),
        bytes(12),
        0,
        sa.reqid,
        fam,
        XFRM_MODE_TUNNEL,
        0 if use_esn_attr else sa.replay_window,
        flags,
    )
    attrs = b""
    name = KERNEL_ENCR[sa.encr].encode().ljust(64, b"\0")
    if e.aead:
        attrs += nla(XFRMA_ALG_AEAD, name + struct.pack("=II", len(sa.enc_key) * 8, e.icv_size * 8) + sa.enc_key)
    else:
        if sa.integ is None or sa.integ not in KERNEL_INTEG:
            raise DataPlaneError(f"the kernel data plane has no mapping for integrity {sa.integ!r}")
        attrs += nla(XFRMA_ALG_CRYPT, name + struct.pack("=I", len(sa.enc_key) * 8) + sa.enc_key)
        it = INTEG[sa.integ]
        aname = KERNEL_INTEG[sa.integ].encode().ljust(64, b"\0")
        attrs += nla(
            XFRMA_ALG_AUTH_TRUNC, aname + struct.pack("=II", len(sa.integ_key) * 8, it.icv_len * 8) + sa.integ_key
        )
    if sa.encap is not None:
        attrs += nla(
            XFRMA_ENCAP,
            _ENCAP_TMPL.pack(
                UDP_ENCAP_ESPINUDP, sa.encap[0].to_bytes(2, "big"), sa.encap[1].to_bytes(2, "big"), bytes(16)
            ),
        )
    if use_esn_attr:
        window = max(sa.replay_window, 1)
        words = (window + 31) // 32
        # without the bitmap words: the kernel zero-fills them (as iproute2 sends it)
        attrs += nla(XFRMA_REPLAY_ESN_VAL, _REPLAY_ESN.pack(words, 0, 0, 0, 0, window))
    return nlmsg(XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, info + attrs, seq)


def delsa_msg(src: str, dst: str, spi: bytes, seq: int = 0) -> bytes:
    fam, daddr = _addr(dst)
    _, saddr = _addr(src)
    return nlmsg(
        XFRM_MSG_DELSA,
        NLM_F_REQUEST | NLM_F_ACK,
        _USERSA_ID.pack(daddr, spi, fam, IPPROTO_ESP) + nla(XFRMA_SRCADDR, saddr),
        seq,
    )


def getsa_msg(src: str, dst: str, spi: bytes, seq: int = 0) -> bytes:
    fam, daddr = _addr(dst)
    _, saddr = _addr(src)
    return nlmsg(
        XFRM_MSG_GETSA, NLM_F_REQUEST, _USERSA_ID.pack(daddr, spi, fam, IPPROTO_ESP) + nla(XFRMA_SRCADDR, saddr), seq
    )


@dataclass(frozen=True)
class PolicySpec:
    direction: int  # XFRM_POLICY_IN | OUT | FWD
    sel: bytes  # packed xfrm_selector
    tmpl_src: str  # outer addresses of the SA this policy sends through / expects
    tmpl_dst: str
    reqid: int
    priority: int


def newpolicy_msg(p: PolicySpec, seq: int = 0, update: bool = False) -> bytes:
    fam, tdst = _addr(p.tmpl_dst)
    _, tsrc = _addr(p.tmpl_src)
    info = _USERPOLICY_INFO.pack(p.sel, lifetime_cfg(), bytes(32), p.priority, 0, p.direction, XFRM_POLICY_ALLOW, 0, 0)
    tmpl = _USER_TMPL.pack(
        _ID.pack(tdst, bytes(4), IPPROTO_ESP),
        fam,
        tsrc,
        p.reqid,
        XFRM_MODE_TUNNEL,
        0,
        0,
        0xFFFFFFFF,
        0xFFFFFFFF,
        0xFFFFFFFF,
    )
    kind = XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if update else NLM_F_CREATE | NLM_F_EXCL)
    return nlmsg(kind, flags, info + nla(XFRMA_TMPL, tmpl), seq)


def delpolicy_msg(direction: int, sel: bytes, seq: int = 0) -> bytes:
    return nlmsg(XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, _USERPOLICY_ID.pack(sel, 0, direction), seq)


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """A port range as (port, mask) blocks (mask 0 = any port)."""
    if (lo, hi) == (0, 65535):
        return [(0, 0)]
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF ^ (size - 1)))
        lo += size
    return out


def _addr_blocks(ts: TrafficSelector) -> list[tuple[bytes, int]]:
    return [
        (n.network_address.packed.ljust(16, b"\0"), n.prefixlen)
        for n in ipaddress.summarize_address_range(ts.start, ts.end)
    ]


def policy_selectors(local: TrafficSelector, remote: TrafficSelector) -> Iterator[tuple[bytes, bytes]]:
    """(outbound selector, inbound selector) pairs covering local -> remote."""
    if local.version != remote.version:
        return
    fam = socket.AF_INET if local.version == 4 else socket.AF_INET6
    proto = local.protocol or remote.protocol
    if local.protocol and remote.protocol and local.protocol != remote.protocol:
        return
    for lb in _addr_blocks(local):
        for rb in _addr_blocks(remote):
            for lp in port_blocks(local.port_start, local.port_end):
                for rp in port_blocks(remote.port_start, remote.port_end):
                    out = selector(fam, dst=rb, src=lb, proto=proto, dport=rp, sport=lp)
                    inn = selector(fam, dst=lb, src=rb, proto=proto, dport=lp, sport=rp)
                    yield out, inn


class XfrmSocket(NetlinkSocket):
    """A blocking NETLINK_XFRM request/ack socket (requests are few: installs and removals)."""

    def __init__(self) -> None:
        super().__init__(NETLINK_XFRM, "an XFRM")


def probe_esp() -> tuple[bool, str]:
    """Can this kernel hold an ESP SA? Adds and deletes a dummy state (nothing is sent)."""
    try:
        xs = XfrmSocket()
    except DataPlaneError as e:
        return False, str(e)
    spi = os.urandom(4)
    spi = (int.from_bytes(spi, "big") | 0x100).to_bytes(4, "big")
    src, dst = "198.19.255.253", "198.19.255.254"  # RFC 2544 benchmarking range; never used for traffic
    sa = SaSpec(src, dst, spi, "aes-gcm-16", 128, os.urandom(20), None, b"", reqid=0)
    try:
        xs.request(newsa_msg(sa), "adding a test ESP SA")
    except DataPlaneError as e:
        xs.close()
        return False, str(e)
    with contextlib.suppress(DataPlaneError):
        xs.request(delsa_msg(src, dst, spi), "deleting the test ESP SA")
    xs.close()
    return True, "ok"


@dataclass
class _XChild:
    child: ChildSaEstablished
    reqid: int
    sas: list[tuple[str, str, bytes]] = field(default_factory=list)  # (src, dst, spi) installed
    policies: list[tuple[int, bytes]] = field(default_factory=list)  # (direction, selector) installed


class XfrmDataPlane:
    name = "xfrm"

    def __init__(self, replay_window: int = 32, priority_base: int = 200000, soft_fraction: float = 0.9) -> None:
        self.replay_window, self.priority_base, self.soft_fraction = replay_window, priority_base, soft_fraction
        self._xs: XfrmSocket | None = None
        self._mon: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: dict[int, _XChild] = {}
        self._by_spi: dict[bytes, int] = {}
        self._expiry_cb: ExpiryCallback | None = None
        self._reqid = 0
        self._udp: list[socket.socket] = []
        self.esp_from_daemon = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._xs = XfrmSocket()
        try:
            mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
            mon.bind((0, 1 << (XFRMNLGRP_EXPIRE - 1)))
            mon.setblocking(False)
            self._mon = mon
            self._loop.add_reader(mon.fileno(), self._on_expire)
        except OSError as e:
            log.warning("cannot watch XFRM expiry messages (%s): soft/hard lifetimes will not be reported", e)
        log.info("kernel XFRM data plane")

    async def close(self) -> None:
        for cid in list(self._children):
            self.remove(cid)
        if self._mon is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._mon.fileno())
            self._mon.close()
            self._mon = None
        for s in self._udp:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(s.fileno())
        if self._xs is not None:
            self._xs.close()
            self._xs = None

    def _sock(self) -> XfrmSocket:
        if self._xs is None:
            self._xs = XfrmSocket()
        return self._xs

    # -- wiring ------------------------------------------------------------------------------------

    def set_expiry_callback(self, cb: ExpiryCallback) -> None:
        self._expiry_cb = cb

    def set_udp_sender(self, send: UdpSender) -> None:
        return None  # the kernel sends ESP-in-UDP itself

    def trap(self, trap_id: int, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        # Would be an out policy with a template and no SA, plus a listener for XFRM_MSG_ACQUIRE; not
        # built yet (this machine's kernel has no ESP to prove it with). The daemon clears instead.
        raise DataPlaneError("the XFRM data plane cannot hold traffic without an SA yet (dpd_action hold)")

    def untrap(self, trap_id: int) -> None:
        return None

    def set_acquire_callback(self, cb: AcquireCallback) -> None:
        return None

    def receive_udp_esp(self, data: bytes, local: Address, remote: Address) -> None:
        # With UDP_ENCAP set on the socket the kernel takes ESP before the daemon sees it.
        self.esp_from_daemon += 1

    def bypass_socket(self, sock: socket.socket) -> None:
        level, opt = (
            (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY)
            if sock.family == socket.AF_INET6
            else (
                socket.IPPROTO_IP,
                IP_XFRM_POLICY,
            )
        )
        for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
            # The kernel refuses (EINVAL) a socket policy whose selector names no address family.
            pol = _USERPOLICY_INFO.pack(
                selector(sock.family), lifetime_cfg(), bytes(32), 0, 0, direction, XFRM_POLICY_ALLOW, 0, 0
            )
            try:
                sock.setsockopt(level, opt, pol)
            except OSError as e:
                raise DataPlaneError(f"cannot set an IPsec bypass policy on the IKE socket: {e.strerror}") from e

    def decap_udp_socket(self, sock: socket.socket) -> None:
        """Let the kernel take ESP-in-UDP arriving on a port-4500 socket that the daemon goes on
        reading (wildcard binds): the kernel decapsulates what has a non-zero SPI and eats NAT
        keepalives; IKE behind the non-ESP marker still reaches the socket, marker included."""
        try:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        except OSError as e:
            raise DataPlaneError(f"cannot enable ESP-in-UDP decapsulation on the socket: {e.strerror}") from e

    def attach_udp_socket(self, sock: socket.socket, on_ike: IkeHandler) -> None:
        """Let the kernel decapsulate ESP-in-UDP arriving on `sock`; everything else goes to on_ike."""
        self.decap_udp_socket(sock)
        self.bypass_socket(sock)
        sock.setblocking(False)
        self._udp.append(sock)
        local = sock.getsockname()[:2]
        loop = self._loop or asyncio.get_event_loop()

        def readable() -> None:
            for _ in range(64):
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    return
                except OSError:
                    continue
                on_ike(data, (local[0], local[1]), (addr[0], addr[1]))

        loop.add_reader(sock.fileno(), readable)

    # -- install / remove --------------------------------------------------------------------------

    def sa_specs(self, child: ChildSaEstablished, reqid: int) -> tuple[SaSpec, SaSpec]:
        p = child.proposal
        encap_in = (child.remote[1], child.local[1]) if child.udp_encap else None
        encap_out = (child.local[1], child.remote[1]) if child.udp_encap else None
        # The kernel sends no soft expire before sequence number exhaustion: the packet limits do.
        lt = Lifetime.from_negotiated(child.lifetime_s, child.lifetime_kb, self.soft_fraction, esn=p.esn)
        common = {
            "encr": p.encr,
            "keylen": p.encr_keylen,
            "integ": p.integ,
            "reqid": reqid,
            "esn": p.esn,
            "replay_window": self.replay_window,
            "soft_bytes": lt.soft_bytes,
            "hard_bytes": lt.hard_bytes,
            "soft_s": int(lt.soft_s),
            "hard_s": child.lifetime_s,
            "soft_packets": lt.soft_packets,
            "hard_packets": lt.hard_packets,
        }
        inn = SaSpec(
            child.remote[0],
            child.local[0],
            child.inbound.spi,
            enc_key=child.inbound.enc_key,
            integ_key=child.inbound.integ_key,
            encap=encap_in,
            **common,  # type: ignore[arg-type]
        )
        out = SaSpec(
            child.local[0],
            child.remote[0],
            child.outbound.spi,
            enc_key=child.outbound.enc_key,
            integ_key=child.outbound.integ_key,
            encap=encap_out,
            **common,  # type: ignore[arg-type]
        )
        return inn, out

    def policy_specs(self, child: ChildSaEstablished, reqid: int) -> list[PolicySpec]:
        lo, ro = child.local[0], child.remote[0]
        specs: list[PolicySpec] = []
        for lts in child.local_ts:
            for rts in child.remote_ts:
                for out_sel, in_sel in policy_selectors(lts, rts):
                    # more specific selectors first: lower value = higher priority
                    prio = self.priority_base - (out_sel[42] + out_sel[43]) * 8 - (1 if out_sel[44] else 0)
                    specs.append(PolicySpec(XFRM_POLICY_OUT, out_sel, lo, ro, reqid, prio))
                    specs.append(PolicySpec(XFRM_POLICY_IN, in_sel, ro, lo, reqid, prio))
                    specs.append(PolicySpec(XFRM_POLICY_FWD, in_sel, ro, lo, reqid, prio))
        return specs

    def install(self, child: ChildSaEstablished) -> None:
        cid = child.child_id
        if cid in self._children:
            raise DataPlaneError(f"child SA {cid} is already installed; remove it first")
        if child.protocol != "esp" or child.mode != "tunnel":
            raise DataPlaneError(f"child SA {cid}: the XFRM data plane does ESP tunnel mode only")
        self._reqid += 1
        rec = _XChild(child, self._reqid)
        self._children[cid] = rec
        try:
            for sa in self.sa_specs(child, rec.reqid):
                self._sock().request(newsa_msg(sa), f"child SA {cid}: adding SA {sa.spi.hex()}")
                rec.sas.append((sa.src, sa.dst, sa.spi))
                self._by_spi[sa.spi] = cid
            self.install_policies(child, rec)
        except DataPlaneError:
            self.remove(cid)
            raise

    def install_policies(self, child: ChildSaEstablished, rec: _XChild | None = None) -> None:
        """The policy half alone (also usable where the kernel lacks ESP, e.g. for tests)."""
        if rec is None:
            self._reqid += 1
            rec = self._children.setdefault(child.child_id, _XChild(child, self._reqid))
        # A rekeyed child has the same selectors as the one it replaces: update in place.
        update = child.rekey_of is not None
        for p in self.policy_specs(child, rec.reqid):
            self._sock().request(newpolicy_msg(p, update=update), f"child SA {child.child_id}: adding a policy")
            rec.policies.append((p.direction, p.sel))

    def remove(self, child_id: int) -> None:
        rec = self._children.pop(child_id, None)
        if rec is None:
            return
        # A newer child with the same selectors (rekey) owns the policies now: keep them.
        shared = any(c.child.rekey_of == child_id for c in self._children.values())
        if not shared:
            for direction, sel in rec.policies:
                with contextlib.suppress(DataPlaneError):
                    self._sock().request(delpolicy_msg(direction, sel), "deleting a policy")
        for src, dst, spi in rec.sas:
            self._by_spi.pop(spi, None)
            with contextlib.suppress(DataPlaneError):
                self._sock().request(delsa_msg(src, dst, spi), "deleting an SA")

    def counters(self, child_id: int) -> ChildCounters:
        rec = self._children.get(child_id)
        if rec is None:
            raise DataPlaneError(f"no child SA {child_id} is installed")
        c = ChildCounters()
        for i, (src, dst, spi) in enumerate(rec.sas):
            try:
                replies = self._sock().request(getsa_msg(src, dst, spi), "reading an SA")
            except DataPlaneError:
                continue
            for kind, body in replies:
                if kind == XFRM_MSG_NEWSA and len(body) >= _USERSA_INFO.size:
                    nbytes, npackets, _add, use = _LIFETIME_CUR.unpack_from(body, 160)
                    errs = struct.unpack_from("=III", body, 192)
                    if i == 0:  # inbound
                        c.bytes_in, c.packets_in, c.dropped_in = nbytes, npackets, errs[1] + errs[2]
                    else:
                        c.bytes_out, c.packets_out = nbytes, npackets
                    if use:
                        c.last_used = max(c.last_used or 0.0, float(use))  # wall-clock seconds (kernel use_time)
        # the kernel checks its byte limit against the same curlft.bytes
        c.kb_left = kb_left(rec.child.lifetime_kb * 1024, c.bytes_in, c.bytes_out)
        return c

    def _on_expire(self) -> None:
        assert self._mon is not None
        while True:
            try:
                data = self._mon.recv(1 << 16)
            except BlockingIOError:
                return
            for kind, _f, _s, body in messages(data):
                if kind != XFRM_MSG_EXPIRE or len(body) < _USERSA_INFO.size + 1:
                    continue
                spi = body[56 + 16 : 56 + 20]
                hard = body[_USERSA_INFO.size] != 0
                cid = self._by_spi.get(spi)
                if cid is not None and self._expiry_cb is not None:
                    try:
                        self._expiry_cb(cid, "hard" if hard else "soft")
                    except Exception:
                        log.exception("expiry callback failed for child SA %d", cid)
