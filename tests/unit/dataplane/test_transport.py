"""Transport mode: taking the IP header off, putting it back (checked against scapy), the RFC 3948
checksum fix behind a NAT, ESP in transport mode against scapy's, and the plane's view of a
transport-mode child."""

from __future__ import annotations

import dataclasses
import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet, Raw

from ike.dataplane.base import DataPlaneError
from ike.dataplane.esp import EspSa
from ike.dataplane.gro import PLAIN, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR
from ike.dataplane.transport import Reassembler, Rebuild, strip
from ike.dataplane.userspace import _transport_view
from ike.policy import TrafficSelector as T

from .test_backends import child

A, B = "198.18.0.1", "198.18.0.2"
A6, B6 = "2001:db8:0:1::1", "2001:db8:0:1::2"


def checksum_ok(pkt: bytes) -> bool:
    """scapy recomputes every checksum of the packet: unchanged means they were right."""
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    q = p.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in q:
            del q[layer].chksum
    return bytes(q.__class__(bytes(q))) == pkt


@pytest.mark.parametrize(
    "pkt",
    [
        IP(src=B, dst=A, flags="DF", ttl=64, id=0) / TCP(sport=5201, dport=40000, flags="PA") / Raw(b"x" * 300),
        IP(src=B, dst=A, flags="DF", ttl=64, id=0) / UDP(sport=53, dport=4000) / Raw(b"y" * 33),
        IP(src=B, dst=A, flags="DF", ttl=64, id=0) / ICMP() / Raw(b"z" * 56),
        IPv6(src=B6, dst=A6, hlim=64) / TCP(sport=1, dport=2) / Raw(b"w" * 1000),
    ],
    ids=["tcp4", "udp4", "icmp4", "tcp6"],
)
def test_strip_and_rebuild_give_back_the_packet(pkt: Packet) -> None:
    raw = bytes(pkt)
    got = strip(raw)
    assert got is not None
    proto, payload = got
    assert proto == (pkt.proto if IP in pkt else pkt.nh) and bytes(payload) == bytes(pkt.payload)
    v6 = IPv6 in pkt
    back = Rebuild(B6 if v6 else B, A6 if v6 else A)(proto, bytes(payload))
    assert back == raw and checksum_ok(back)


def test_strip_refuses_fragments_and_extension_headers() -> None:
    frag = bytes(IP(src=A, dst=B, flags="MF") / UDP() / Raw(b"a" * 40))
    later = bytes(IP(src=A, dst=B, frag=10) / Raw(b"a" * 40))
    ext = bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / UDP() / Raw(b"b"))
    assert strip(frag) is None and strip(later) is None and strip(ext) is None
    # trailing bytes past the IPv4 total length are not payload
    assert strip(bytes(IP(src=A, dst=B) / ICMP()) + b"\0" * 6) == (1, bytes(ICMP()))


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_nat_checksum_fix(v6: bool) -> None:
    """The peer (private address) checksummed over its own addresses; we write the NAT's outer one."""
    private, nat, us = ("2001:db8:9::5", "2001:db8:0:1::2", A6) if v6 else ("198.18.9.5", B, A)
    ip = IPv6(src=private, dst=us, hlim=64) if v6 else IP(src=private, dst=us, flags="DF", ttl=64, id=0)
    rb = Rebuild(nat, us, private, us)
    assert rb.fix
    seg = bytes((ip / TCP(sport=22, dport=50000, flags="A", seq=7) / Raw(os.urandom(501)))[TCP])
    out = rb(6, seg)
    assert checksum_ok(out), "TCP checksum not adjusted to the rebuilt addresses"
    assert not checksum_ok(Rebuild(nat, us)(6, seg))  # unfixed it would be wrong: the check can fail
    assert (IPv6(out) if v6 else IP(out)).src == nat
    udp = bytes((ip / UDP(sport=500, dport=1000) / Raw(b"q" * 21))[UDP])
    out = rb(17, udp)
    if v6:
        assert checksum_ok(out)
    else:
        assert IP(out)[UDP].chksum == 0  # RFC 3948 §3.1.2: cleared, which IPv4 UDP allows
    # no NAT: nothing touched
    plain = Rebuild(nat, us)
    assert not plain.fix and plain(17, udp)[-len(udp) :] == udp


def test_esp_transport_mode_interoperates_with_scapy() -> None:
    ek = os.urandom(20)
    sa = SecurityAssociation(ESP, spi=0x1234, crypt_algo="AES-GCM", crypt_key=ek, auth_algo="NULL")
    pkt = IP(src=B, dst=A, flags="DF", ttl=64, id=0) / TCP(sport=80, dport=3000, flags="A") / Raw(b"p" * 200)
    pkt = IP(bytes(pkt))  # checksums filled in
    enc = sa.encrypt(pkt)  # scapy without a tunnel header: transport mode
    ours = EspSa(0x1234, "aes-gcm-16", 128, ek)
    nh, payload = ours.decapsulate(bytes(enc[ESP]))
    assert nh == 6 and Rebuild(B, A)(nh, payload) == bytes(pkt)
    # and the other way: what we send, scapy decrypts to the same packet
    out = EspSa(0x1234, "aes-gcm-16", 128, ek)
    proto, body = strip(bytes(pkt)) or (0, b"")
    esp = out.encapsulate(body, proto)
    dec = sa.decrypt(IP(bytes(IP(src=A, dst=B, proto=50) / Raw(esp))))
    assert bytes(dec[TCP]) == bytes(pkt[TCP])


def test_transport_view_narrows_selectors_to_the_outer_addresses() -> None:
    c = dataclasses.replace(
        child(),
        mode="transport",
        local=(A, 4500),
        remote=(B, 4500),
        udp_encap=True,
        local_ts=(T.host(A, 6, 22), T.subnet("2001:db8:1::/64")),
        remote_ts=(T.host("198.18.9.5", 6),),  # the peer behind a NAT names its private address
    )
    view, rb = _transport_view(c)
    assert view.local_ts == (T.host(A, 6, 22),)
    assert view.remote_ts == (T.host(B, 6),)
    assert rb.fix  # the peer's checksums cover 198.18.9.5, not B
    same = dataclasses.replace(c, remote_ts=(T.host(B),), local_ts=(T.host(A),))
    assert not _transport_view(same)[1].fix
    with pytest.raises(DataPlaneError, match=r"no traffic selector .* \(IPv4\)"):
        _transport_view(dataclasses.replace(c, local_ts=(T.subnet("2001:db8:1::/64"),)))
    with pytest.raises(DataPlaneError, match="two address families"):
        _transport_view(dataclasses.replace(c, remote=(B6, 4500)))


def complete_partial(hdr: bytes, pkt: bytes) -> bytes:
    """What the kernel does with a CHECKSUM_PARTIAL packet it must send on: sum from csum_start to the
    end (the field holds the pseudo-header sum) and store the complement at csum_start + csum_offset."""
    flags, _gso, _hl, _size, start, off = VNET_HDR.unpack(hdr)
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    body = pkt[start:] + b"\0" * (len(pkt[start:]) % 2)
    s = sum(int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    at = start + off
    return pkt[:at] + (~s & 0xFFFF).to_bytes(2, "big") + pkt[at + 2 :]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_partial_checksum_mode_lets_the_kernel_finish_any_checksum(v6: bool) -> None:
    """With a virtio-net header the inner checksum is handed over as partial: whatever addresses the
    peer checksummed over (here one we cannot know), the finished checksum fits the rebuilt header."""
    unknown, nat, us = ("2001:db8:9::5", B6, A6) if v6 else ("198.18.9.5", B, A)
    ip = IPv6(src=unknown, dst="2001:db8:7::7", hlim=64) if v6 else IP(src=unknown, dst="198.18.7.7")
    rb = Rebuild(nat, us, partial=True)
    for proto, l4 in ((6, TCP(sport=1, dport=2, flags="A") / Raw(os.urandom(333))), (17, UDP() / Raw(b"u" * 9))):
        seg = bytes((ip / l4)[TCP if proto == 6 else UDP])
        out = rb(proto, seg)
        hdr = rb.header(proto)
        assert not checksum_ok(out) and checksum_ok(complete_partial(hdr, out))
    assert rb.header(1) == PLAIN and rb(1, b"\x08\0\0\0\0\0\0\0")[-8:] == b"\x08\0\0\0\0\0\0\0"


def test_reassembler_puts_fragments_of_both_families_back_together() -> None:
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    r = Reassembler()
    dgram = IP(src=A, dst=B, id=77) / UDP(sport=5, dport=9) / Raw(os.urandom(3000))
    frags = [bytes(f) for f in fragment(dgram, fragsize=1000)]
    assert len(frags) == 4 and all(strip(f) is None for f in frags)
    got = [r.add(f) for f in (frags[2], frags[0], frags[3], frags[1])]  # any order
    assert got[:3] == [None, None, None] and got[3] == (17, bytes(dgram[UDP]))
    d6 = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=5) / UDP(sport=5, dport=9) / Raw(os.urandom(4000))
    f6 = [bytes(f) for f in fragment6(d6, 1400)]
    assert len(f6) > 1 and [r.add(f) for f in f6][-1] == (17, bytes(d6[UDP]))
    assert r.dropped == 0 and not r._pending


def test_reassembler_gives_up_on_what_it_cannot_use() -> None:
    from scapy.layers.inet import fragment

    r = Reassembler()
    assert r.add(bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / UDP())) is None and r.dropped == 1
    # more unfinished datagrams than it keeps: the oldest are evicted and counted
    for i in range(70):
        first = bytes(fragment(IP(src=A, dst=B, id=i) / UDP() / Raw(b"x" * 2000), fragsize=1000)[0])
        assert r.add(first) is None
    assert len(r._pending) == 64 and r.dropped == 1 + 6
