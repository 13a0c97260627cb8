"""TCP receive coalescing: merged packets carry exactly the segments' bytes, valid IP headers and a
correct partial checksum; anything unusual passes through unmerged and in order."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ike.dataplane.gro import (
    PLAIN,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    Coalescer,
)

MSS = 1000


def seg(seq: int, n: int = MSS, flags: str = "A", sport: int = 1000, v6: bool = False, opts: bool = True) -> bytes:
    ip = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") if v6 else IP(src="198.19.1.1", dst="198.19.2.1", ttl=64)
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))] if opts else []
    t = TCP(sport=sport, dport=5201, seq=seq, ack=77, flags=flags, window=500, options=options)
    return bytes(ip / t / Raw(os.urandom(n)))


class Sink:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def __call__(self, bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        self.out.append(b"".join(bytes(b) for b in bufs))


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def complete_checksum(pkt: bytes, start: int, offset: int) -> bytes:
    """What the kernel does for a CHECKSUM_PARTIAL packet: sum from csum_start, store the complement."""
    c = ~ones_sum(pkt[start:]) & 0xFFFF
    return pkt[: start + offset] + c.to_bytes(2, "big") + pkt[start + offset + 2 :]


def test_in_sequence_segments_merge_into_one_gso_packet() -> None:
    sink = Sink()
    g = Coalescer(sink)
    segs = [seg(1 + i * MSS) for i in range(5)] + [seg(1 + 5 * MSS, 300, "PA")]
    for s in segs:
        g.add(s)
    assert sink.out == []  # nothing before the flush
    g.flush()
    assert len(sink.out) == 1 and g.merged == 6
    out = sink.out[0]
    flags, gso, hdr_len, gso_size, start, off = VNET_HDR.unpack_from(out)
    assert (flags, gso, gso_size, start, off) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, MSS, 20, 16)
    pkt = out[VNET_HDR.size :]
    first = IP(segs[0])
    assert hdr_len == 20 + first[TCP].dataofs * 4
    merged = IP(complete_checksum(pkt, start, off))
    assert merged.len == len(pkt)
    assert bytes(merged[TCP].payload) == b"".join(bytes(IP(s)[TCP].payload) for s in segs)
    assert merged[TCP].seq == 1 and merged[TCP].flags == "PA" and merged[TCP].options == first[TCP].options
    # scapy recomputes both checksums from scratch: they must equal what we (and the "kernel") wrote
    rebuilt = merged.copy()
    del rebuilt.chksum
    del rebuilt[TCP].chksum
    assert bytes(IP(bytes(rebuilt))) == bytes(merged)


def test_ipv6_merges_with_tcpv6_gso() -> None:
    sink = Sink()
    g = Coalescer(sink)
    segs = [seg(5000 + i * MSS, v6=True) for i in range(3)]
    for s in segs:
        g.add(s)
    g.flush()
    (out,) = sink.out
    flags, gso, _hl, gso_size, start, off = VNET_HDR.unpack_from(out)
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert (gso, gso_size, start) == (VIRTIO_NET_HDR_GSO_TCPV6, MSS, 40)
    merged = IPv6(complete_checksum(out[VNET_HDR.size :], start, off))
    assert merged.plen == len(out) - VNET_HDR.size - 40
    rebuilt = merged.copy()
    del rebuilt[TCP].chksum
    assert bytes(IPv6(bytes(rebuilt))) == bytes(merged)
    assert bytes(merged[TCP].payload) == b"".join(bytes(IPv6(s)[TCP].payload) for s in segs)


def test_gap_in_sequence_starts_a_new_packet() -> None:
    sink = Sink()
    g = Coalescer(sink)
    for s in (seg(1), seg(1 + MSS), seg(1 + 3 * MSS)):
        g.add(s)
    g.flush()
    assert len(sink.out) == 2
    assert VNET_HDR.unpack_from(sink.out[0])[1] == VIRTIO_NET_HDR_GSO_TCPV4
    assert sink.out[1].startswith(PLAIN)  # a chain of one goes out as it came


def test_short_segment_or_psh_ends_a_chain() -> None:
    sink = Sink()
    g = Coalescer(sink)
    for s in (seg(1), seg(1 + MSS, 10), seg(11 + MSS)):  # short one in the middle
        g.add(s)
    g.flush()
    assert len(sink.out) == 2 and IP(sink.out[1][VNET_HDR.size :])[TCP].seq == 11 + MSS


def test_flags_other_than_ack_psh_pass_through_in_order() -> None:
    sink = Sink()
    g = Coalescer(sink)
    a, b, fin = seg(1), seg(1 + MSS), seg(1 + 2 * MSS, 0, "FA")
    for s in (a, b, fin):
        g.add(s)
    g.flush()
    # the pending chain goes first, then the FIN, nothing held back
    assert len(sink.out) == 2
    assert sink.out[1] == PLAIN + fin


def test_other_flows_and_protocols_do_not_merge_together() -> None:
    sink = Sink()
    g = Coalescer(sink)
    udp = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    icmp = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / ICMP() / Raw(b"y" * 56))
    x1, y1, x2, y2 = seg(1, sport=1), seg(1, sport=2), seg(1 + MSS, sport=1), seg(1 + MSS, sport=2)
    for s in (x1, udp, y1, icmp, x2, y2):
        g.add(s)
    g.flush()
    assert sink.out[0] == PLAIN + udp and sink.out[1] == PLAIN + icmp
    merged = [IP(o[VNET_HDR.size :]) for o in sink.out[2:]]
    assert sorted(m[TCP].sport for m in merged) == [1, 2]
    assert all(len(m[TCP].payload) == 2 * MSS for m in merged)


def test_different_options_do_not_merge() -> None:
    sink = Sink()
    g = Coalescer(sink)
    g.add(seg(1))
    g.add(seg(1 + MSS, opts=False))
    g.flush()
    assert len(sink.out) == 2 and all(o.startswith(PLAIN) for o in sink.out)


def test_kernel_refusing_gso_gets_the_segments_unmerged() -> None:
    written: list[bytes] = []

    def writev(bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        data = b"".join(bytes(b) for b in bufs)
        if VNET_HDR.unpack_from(data)[1]:  # a GSO packet
            raise OSError(22, "Invalid argument")
        written.append(data)

    g = Coalescer(writev)
    segs = [seg(1 + i * MSS) for i in range(3)]
    for s in segs:
        g.add(s)
    g.flush()
    assert written == [PLAIN + s for s in segs] and not g.enabled
    g.add(segs[0])  # from now on packets go straight through
    assert written[-1] == PLAIN + segs[0]


def test_a_packets_own_header_is_kept_when_it_is_written_alone() -> None:
    """Transport mode hands packets over with a "checksum partial" header: a segment written alone
    (a chain of one, or a packet that cannot merge) keeps it; merged ones get the GSO header."""
    own = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    sink = Sink()
    g = Coalescer(sink)
    one = seg(1)
    g.add(one, own)
    g.flush()
    udp = bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP() / Raw(b"x" * 40))
    g.add(udp, own)
    assert sink.out == [own + one, own + udp]
    g.add(seg(1), own)
    g.add(seg(1 + MSS), own)
    g.flush()
    assert VNET_HDR.unpack(sink.out[-1][: len(PLAIN)])[1] == VIRTIO_NET_HDR_GSO_TCPV4
