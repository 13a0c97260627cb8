"""Receive coalescing for the TUN device (like a NIC's GRO): consecutive TCP segments of one flow,
decrypted in one batch, are written to the kernel as one large packet with a virtio-net header that
says "GSO TCP, segment size N, checksum partial". The kernel's TCP stack then handles one packet
instead of dozens (and acknowledges once), which is most of the kernel's per-packet cost; forwarded
traffic is cut back into segments by the kernel's own GSO. The wire never sees these large packets:
each segment travelled in its own ESP packet.

Only plain cases merge (IPv4 without options or IPv6 without extension headers, ACK/PSH flags only,
in-sequence, identical TCP options, all segments full-sized but the last); anything else is written
as it came.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
PLAIN = bytes(VNET_HDR_LEN)  # "nothing to do" header for single packets

_MAX_TOTAL = 65000  # IPv4 total length is 16 bits; stay below with headers
_MAX_SEGS = 64
_TCP_ACK, _TCP_PSH = 0x10, 0x08
_H10 = struct.Struct("!10H")


def _fold(s: int) -> int:
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_header_checksum(hdr: bytes | bytearray) -> int:
    """RFC 791 header checksum of a 20-byte header whose checksum field is zero."""
    return ~_fold(sum(_H10.unpack(hdr))) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded, not complemented, pseudo-header sum: what a CHECKSUM_PARTIAL packet carries."""
    s = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    # sum of 16-bit words of the addresses: fold the big integers word by word
    words = 0
    while s:
        words += s & 0xFFFF
        s >>= 16
    return _fold(words + proto + length)


_V4 = struct.Struct("!BB4xHBB")  # version/IHL, TOS, flags/fragment offset, TTL, protocol
_TCP = struct.Struct("!4xIIBB")  # (ports skipped) seq, ack, data offset, flags


class _Chain:
    __slots__ = (
        "ack",
        "first",
        "hdr",
        "ihl",
        "mss",
        "n",
        "next_seq",
        "opts",
        "parts",
        "psh",
        "short",
        "thl",
        "total",
        "tt",
        "v6",
    )

    def __init__(
        self, pkt: bytes, ihl: int, thl: int, seq: int, ack: int, plen: int, tt: int, v6: bool, hdr: bytes
    ) -> None:
        self.first = pkt
        self.hdr = hdr  # virtio-net header for a segment written alone
        self.ihl, self.thl, self.v6, self.ack, self.tt = ihl, thl, v6, ack, tt
        self.opts = pkt[ihl + 20 : ihl + thl]  # must be identical in later segments (timestamps too)
        self.mss = plen
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.parts: list[bytes] = [pkt]
        self.total = plen
        self.psh = bool(pkt[ihl + 13] & _TCP_PSH)
        self.short = False
        self.n = 1


class Coalescer:
    """Collects decrypted packets of one receive batch; `flush()` writes them out."""

    def __init__(self, writev: Callable[[Sequence[bytes | bytearray | memoryview]], object]) -> None:
        self._writev = writev
        self._chains: dict[bytes, _Chain] = {}
        self.merged = 0  # segments that went out inside a larger packet
        self.enabled = True  # cleared if the kernel refuses a merged packet

    def add(self, pkt: bytes, hdr: bytes = PLAIN) -> None:
        """`hdr`: the virtio-net header if the packet is written alone (transport mode may hand over a
        packet whose checksum the kernel is to treat as partial); merged packets get their own."""
        n = len(pkt)
        if n < 40 or not self.enabled:
            return self._plain(pkt, hdr)
        if pkt[0] == 0x45:  # IPv4 without options
            _vi, tos, frag, ttl, proto = _V4.unpack_from(pkt)
            if proto != 6 or frag & 0x3FFF:  # not TCP, or a fragment
                return self._plain(pkt, hdr)
            ihl, key, v6, tt = 20, pkt[12:24], False, (tos << 8) | ttl
        elif pkt[0] >> 4 == 6 and pkt[6] == 6 and n >= 60:  # IPv6, TCP directly after the header
            ihl, key, v6, tt = 40, pkt[8:44], True, 0
        else:
            return self._plain(pkt, hdr)
        seq, ack, off, flags = _TCP.unpack_from(pkt, ihl)
        thl = (off >> 4) * 4
        plen = n - ihl - thl
        if plen <= 0 or flags & ~(_TCP_ACK | _TCP_PSH) or thl < 20:
            self._flush_key(key)
            return self._plain(pkt, hdr)
        c = self._chains.get(key)
        if c is not None:
            if (
                seq == c.next_seq
                and ack == c.ack
                and thl == c.thl
                and not c.psh
                and not c.short
                and plen <= c.mss
                and tt == c.tt
                and c.n < _MAX_SEGS
                and c.total + plen <= _MAX_TOTAL
                and (thl == 20 or pkt[ihl + 20 : ihl + thl] == c.opts)
            ):
                c.parts.append(pkt)
                c.total += plen
                c.next_seq = (seq + plen) & 0xFFFFFFFF
                c.n += 1
                if flags & _TCP_PSH:
                    c.psh = True
                if plen < c.mss:
                    c.short = True
                return None
            self._emit(c)
        self._chains[key] = _Chain(pkt, ihl, thl, seq, ack, plen, tt, v6, hdr)
        return None

    def _plain(self, pkt: bytes, hdr: bytes = PLAIN) -> None:
        self._writev((hdr, pkt))

    def _flush_key(self, key: bytes) -> None:
        c = self._chains.pop(key, None)
        if c is not None:
            self._emit(c)

    def flush(self) -> None:
        if self._chains:
            for c in self._chains.values():
                self._emit(c)
            self._chains.clear()

    def _emit(self, c: _Chain) -> None:
        if c.n == 1:
            self._writev((c.hdr, c.first))
            return
        first, ihl, thl = c.first, c.ihl, c.thl
        tcp = bytearray(first[ihl : ihl + thl])
        if c.psh:
            tcp[13] |= _TCP_PSH
        l4len = thl + c.total
        if c.v6:
            ip = bytearray(first[:40])
            ip[4:6] = l4len.to_bytes(2, "big")
            tcp[16:18] = pseudo_header_sum(first[8:24], first[24:40], 6, l4len).to_bytes(2, "big")
            gso = VIRTIO_NET_HDR_GSO_TCPV6
        else:
            ip = bytearray(first[:20])
            ip[2:4] = (20 + l4len).to_bytes(2, "big")
            ip[10:12] = b"\0\0"
            ip[10:12] = ipv4_header_checksum(ip).to_bytes(2, "big")
            tcp[16:18] = pseudo_header_sum(first[12:16], first[16:20], 6, l4len).to_bytes(2, "big")
            gso = VIRTIO_NET_HDR_GSO_TCPV4
        hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, ihl + thl, c.mss, ihl, 16)
        cut = ihl + thl
        try:
            self._writev([hdr, ip, tcp, *(memoryview(p)[cut:] for p in c.parts)])
        except OSError:
            if not self.enabled:
                raise
            # A kernel that refuses GSO packets from a TUN device: write segments as they came, from now on.
            self.enabled = False
            for p in c.parts:
                self._writev((c.hdr, p))
            return
        self.merged += c.n
