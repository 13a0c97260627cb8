"""Transport mode (RFC 4303 §3.1.1) for the userspace data plane: host-to-host SAs carry the transport
payload (TCP, UDP, ICMP, ...) without the IP header; the receiver puts an IP header back.

Outbound, `strip` takes the packet the kernel routed into the TUN device apart: (protocol, payload).
Transport mode protects whole datagrams, but the kernel fragments a datagram larger than the TUN MTU
before handing it over; `Reassembler` puts such fragments back together (they arrive in one burst
from the local stack), and the ESP packet of the whole datagram is fragmented by the kernel on the
outside, as kernel IPsec does. Other IPv6 extension headers are refused. TCP never fragments.

Inbound, a `Rebuild` made once per SA writes the IP header from the SA's outer addresses, with the
IPv4 header checksum taken from a per-SA partial sum. With UDP encapsulation behind a NAT (RFC 3948
§3.1.2) the peer computed its TCP/UDP checksum over its own idea of the addresses (the traffic
selectors it sent: NAT-OA in IKEv1 terms), not over the outer ones we put in the header. Then a
UDP/IPv4 checksum is cleared and TCP (and UDP/IPv6) checksums are adjusted incrementally (RFC 1624)
by a difference computed once per SA. When the TUN device takes virtio-net headers, such packets go
in with their checksum marked partial instead (`partial=True`): the pseudo-header sum is written into
the checksum field and the kernel accepts the packet without verifying it, which is what Linux's own
ESP does for UDP-encapsulated transport mode (CHECKSUM_UNNECESSARY) and also covers the address the
peer saw for us behind our own NAT, which we cannot know.
"""

from __future__ import annotations

import ipaddress
import struct

from ike.dataplane.gro import PLAIN, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR

_V4 = struct.Struct("!HHHHBBH")  # ver/ihl+tos, total length, id, flags/fragment, ttl, proto, checksum
_V6 = struct.Struct("!IHBB")  # version/class/flow, payload length, next header, hop limit
_TTL = 64
_DF = 0x4000
_V6_EXT = frozenset((0, 43, 44, 50, 51, 60, 135, 139, 140))


def _fold(s: int) -> int:
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _words(b: bytes) -> int:
    return sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2))


def strip(pkt: bytes | memoryview) -> tuple[int, bytes | memoryview] | None:
    """(IP protocol, transport payload) of a whole unfragmented packet, else None."""
    v = pkt[0] >> 4
    if v == 4:
        if len(pkt) < 20 or (pkt[6] << 8 | pkt[7]) & 0x3FFF:  # MF or fragment offset
            return None
        total = pkt[2] << 8 | pkt[3]
        return pkt[9], pkt[(pkt[0] & 0x0F) * 4 : total]
    if v == 6 and len(pkt) >= 40:
        nh = pkt[6]
        if nh in _V6_EXT:
            return None
        return nh, pkt[40 : 40 + (pkt[4] << 8 | pkt[5])]
    return None


class Rebuild:
    """Puts the IP header back on decrypted transport-mode payloads of one SA.

    `src`/`dst`: the outer addresses of the inbound SA (peer -> us), written into the header.
    `orig_src`/`orig_dst`: the addresses the peer used for its TCP/UDP checksum; when they differ
    (NAT), the checksum is fixed as RFC 3948 §3.1.2 describes."""

    def __init__(
        self, src: str, dst: str, orig_src: str | None = None, orig_dst: str | None = None, partial: bool = False
    ) -> None:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"transport mode needs outer addresses of one family, not {src} and {dst}")
        self.version = s.version
        self.addrs = s.packed + d.packed
        os_ = ipaddress.ip_address(orig_src or src).packed
        od = ipaddress.ip_address(orig_dst or dst).packed
        self.fix = os_ + od != self.addrs
        # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'); ~m + m' summed once here for all address words.
        old = os_ + od
        self._delta = _fold(
            sum((~int.from_bytes(old[i : i + 2], "big")) & 0xFFFF for i in range(0, len(old), 2)) + _words(self.addrs)
        )
        # IPv4 header checksum: the constant words summed once; length and protocol added per packet.
        self._base = 0x4500 + _DF + _words(self.addrs)
        self.partial = partial
        self._addr_sum = _words(self.addrs)
        ihl = 20 if self.version == 4 else 40
        # virtio-net header per protocol: "checksum partial" at TCP/UDP's checksum field
        self._hdrs = {
            p: VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, ihl, off) if partial else PLAIN
            for p, off in ((6, 16), (17, 6))
        }

    def header(self, proto: int) -> bytes:
        """The virtio-net header to write the packet of `proto` with (see `partial`)."""
        return self._hdrs.get(proto, PLAIN)

    def __call__(self, proto: int, payload: bytes) -> bytes:
        n = len(payload)
        if self.partial and ((proto == 6 and n >= 20) or (proto == 17 and n >= 8)):
            at = 16 if proto == 6 else 6
            pseudo = _fold(self._addr_sum + proto + n)
            payload = payload[:at] + pseudo.to_bytes(2, "big") + payload[at + 2 :]
        elif self.fix:
            payload = self._fix_checksum(proto, payload)
        if self.version == 4:
            total = 20 + n
            csum = ~_fold(self._base + total + (_TTL << 8 | proto)) & 0xFFFF
            return _V4.pack(0x4500, total, 0, _DF, _TTL, proto, csum) + self.addrs + payload
        return _V6.pack(0x60000000, n, proto, _TTL) + self.addrs + payload

    def _fix_checksum(self, proto: int, payload: bytes) -> bytes:
        if proto == 6 and len(payload) >= 20:
            at = 16
        elif proto == 17 and len(payload) >= 8:
            if self.version == 4:  # RFC 3948 §3.1.2: a UDP checksum may simply be cleared
                return payload[:6] + b"\0\0" + payload[8:]
            at = 6
        else:
            return payload
        old = int.from_bytes(payload[at : at + 2], "big")
        new = ~_fold((~old & 0xFFFF) + self._delta) & 0xFFFF
        if proto == 17 and new == 0:
            new = 0xFFFF
        return payload[:at] + new.to_bytes(2, "big") + payload[at + 2 :]


_MAX_PENDING = 64  # datagrams being reassembled at once; the oldest goes first when more arrive


class Reassembler:
    """Fragments of locally sent datagrams from the TUN device -> (protocol, whole payload)."""

    def __init__(self) -> None:
        # key -> (protocol, {offset: piece}, total length once the last fragment came, else -1)
        self._pending: dict[bytes, tuple[int, dict[int, bytes], int]] = {}
        self.dropped = 0  # fragments given up (evicted, malformed, too large)

    def add(self, pkt: bytes | memoryview) -> tuple[int, bytes] | None:
        """Keep one fragment; the whole datagram once its last piece is in. None: not yet, or not a
        fragment we can use (counted in `dropped`)."""
        n = len(pkt)
        v = pkt[0] >> 4
        if v == 4 and n >= 20:
            fo = pkt[6] << 8 | pkt[7]
            ihl = (pkt[0] & 0x0F) * 4
            key = bytes(pkt[12:20]) + bytes(pkt[4:6]) + bytes(pkt[9:10])
            proto, off, more = pkt[9], (fo & 0x1FFF) * 8, bool(fo & 0x2000)
            piece = bytes(pkt[ihl : pkt[2] << 8 | pkt[3]])
        elif v == 6 and n >= 48 and pkt[6] == 44:  # fragment header right after the fixed header
            fo = pkt[42] << 8 | pkt[43]
            key = bytes(pkt[8:40]) + bytes(pkt[44:48])
            proto, off, more = pkt[40], fo & 0xFFF8, bool(fo & 1)
            piece = bytes(pkt[48 : 40 + (pkt[4] << 8 | pkt[5])])
        else:
            self.dropped += 1
            return None
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= _MAX_PENDING:
                gone = next(iter(self._pending))
                self.dropped += len(self._pending.pop(gone)[1])
            entry = (proto, {}, -1)
            self._pending[key] = entry
        _p, pieces, total = entry
        pieces[off] = piece
        if not more:
            total = off + len(piece)
            self._pending[key] = (proto, pieces, total)
        if total < 0:
            return None
        if total > 65535:
            self.dropped += len(self._pending.pop(key)[1])
            return None
        at = 0
        for o in sorted(pieces):
            if o != at:  # a gap (or an overlap): wait for more, or for eviction
                return None
            at += len(pieces[o])
        if at != total:
            return None
        del self._pending[key]
        return proto, b"".join(pieces[o] for o in sorted(pieces))
