"""ESP transform: round trips for every cipher, cross-checks with scapy's independent ESP, ESN, replay
window edges, tampering, padding and lifetimes."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from ike.dataplane.esp import (
    NH_IPV4,
    NH_IPV6,
    EspError,
    EspSa,
    IntegrityError,
    Lifetime,
    PaddingError,
    ReplayError,
    SaExpiredError,
    esp_overhead,
)
from ike.proto.transforms import ENCR, INTEG

SPI = 0x11223344

SUITES = [
    ("aes-gcm-16", 128, None),
    ("aes-gcm-16", 192, None),
    ("aes-gcm-16", 256, None),
    ("chacha20-poly1305", 256, None),
    ("aes-cbc", 128, "hmac-sha1-96"),
    ("aes-cbc", 128, "hmac-sha2-256-128"),
    ("aes-cbc", 256, "hmac-sha2-384-192"),
    ("aes-cbc", 192, "hmac-sha2-512-256"),
]

SCAPY_CRYPT = {"aes-gcm-16": "AES-GCM", "chacha20-poly1305": "CHACHA20-POLY1305", "aes-cbc": "AES-CBC"}
SCAPY_AUTH = {
    None: "NULL",
    "hmac-sha1-96": "HMAC-SHA1-96",
    "hmac-sha2-256-128": "SHA2-256-128",
    "hmac-sha2-384-192": "SHA2-384-192",
    "hmac-sha2-512-256": "SHA2-512-256",
}


def keys(encr: str, keylen: int, integ: str | None) -> tuple[bytes, bytes]:
    ek = os.urandom(ENCR[encr].key_material_len(keylen))
    ik = os.urandom(INTEG[integ].key_len) if integ else b""
    return ek, ik


def pair(encr: str, keylen: int, integ: str | None, **kw: object) -> tuple[EspSa, EspSa]:
    ek, ik = keys(encr, keylen, integ)
    return EspSa(SPI, encr, keylen, ek, integ, ik, **kw), EspSa(SPI, encr, keylen, ek, integ, ik, **kw)  # type: ignore[arg-type]


def inner4(n: int = 40) -> bytes:
    return bytes(IP(src="198.19.1.1", dst="198.19.2.1") / UDP(sport=1, dport=2) / Raw(os.urandom(n)))


def scapy_sa(encr: str, ek: bytes, integ: str | None, ik: bytes, **kw: object) -> SecurityAssociation:
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo=SCAPY_CRYPT[encr],
        crypt_key=ek,
        auth_algo=SCAPY_AUTH[integ],
        auth_key=ik or None,
        tunnel_header=IP(src="198.18.0.1", dst="198.18.0.2"),
        **kw,
    )


@pytest.mark.parametrize(("encr", "keylen", "integ"), SUITES)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 15, 16, 17, 1400])
def test_round_trip(encr: str, keylen: int, integ: str | None, size: int) -> None:
    out, inn = pair(encr, keylen, integ)
    pkt = inner4(size)
    esp = out.encapsulate(pkt, NH_IPV4)
    assert pkt not in esp
    block = max(ENCR[encr].block_size, 4)
    icv = ENCR[encr].icv_size or INTEG[integ].icv_len  # type: ignore[index]
    assert (len(esp) - 8 - ENCR[encr].iv_size - icv) % block == 0
    assert len(esp) - len(pkt) <= esp_overhead(encr, integ, False, False) - 20
    assert inn.decapsulate(esp) == (NH_IPV4, pkt)
    assert out.packets == inn.packets == 1 and out.bytes == inn.bytes == len(pkt)


@pytest.mark.parametrize(("encr", "keylen", "integ"), SUITES)
def test_scapy_decrypts_ours(encr: str, keylen: int, integ: str | None) -> None:
    ek, ik = keys(encr, keylen, integ)
    out = EspSa(SPI, encr, keylen, ek, integ, ik)
    sa = scapy_sa(encr, ek, integ, ik)
    for _ in range(3):
        inner = IP(src="198.19.1.1", dst="198.19.2.1") / ICMP() / Raw(os.urandom(33))
        esp = out.encapsulate(bytes(inner), NH_IPV4)
        outer = IP(bytes(IP(src="198.18.0.1", dst="198.18.0.2", proto=50) / Raw(esp)))
        got = sa.decrypt(outer)
        assert bytes(got) == bytes(inner)


@pytest.mark.parametrize(("encr", "keylen", "integ"), SUITES)
def test_we_decrypt_scapys(encr: str, keylen: int, integ: str | None) -> None:
    ek, ik = keys(encr, keylen, integ)
    inn = EspSa(SPI, encr, keylen, ek, integ, ik)
    sa = scapy_sa(encr, ek, integ, ik)
    for seq in (1, 2, 7):
        inner = IP(src="198.19.2.1", dst="198.19.1.1") / UDP() / Raw(os.urandom(50 + seq))
        enc = sa.encrypt(inner, seq_num=seq)
        esp = bytes(enc[ESP])
        assert inn.decapsulate(esp) == (NH_IPV4, bytes(inner))


@pytest.mark.parametrize(("encr", "keylen", "integ"), [SUITES[0], SUITES[4]])
def test_esn_interop_with_scapy(encr: str, keylen: int, integ: str | None) -> None:
    """High sequence bits go into the AAD/ICV: scapy with esn_en must agree with us, across 2^32."""
    ek, ik = keys(encr, keylen, integ)
    out = EspSa(SPI, encr, keylen, ek, integ, ik, esn=True)
    out._seq = (5 << 32) - 2  # near a low-half wrap
    for _ in range(3):
        esp = out.encapsulate(inner4(), NH_IPV4)
        seq = out._seq
        sa = scapy_sa(encr, ek, integ, ik, esn_en=True, esn=seq >> 32)
        outer = IP(bytes(IP(src="198.18.0.1", dst="198.18.0.2", proto=50) / Raw(esp)))
        assert bytes(sa.decrypt(outer)).startswith(b"\x45")
        assert struct.unpack(">I", esp[4:8])[0] == seq & 0xFFFFFFFF


def test_esn_receiver_infers_high_bits_across_wrap() -> None:
    ek, _ = keys("aes-gcm-16", 128, None)
    out = EspSa(SPI, "aes-gcm-16", 128, ek, esn=True)
    inn = EspSa(SPI, "aes-gcm-16", 128, ek, esn=True, replay_window=32)
    out._seq = (1 << 32) - 3
    inn._top = (1 << 32) - 10  # the receiver has seen up to just before
    pkts = [out.encapsulate(inner4(), NH_IPV4) for _ in range(6)]  # seq 2^32-2 .. 2^32+3
    # deliver in a shuffled order around the wrap; all must verify
    for i in (1, 0, 3, 2, 5, 4):
        assert inn.decapsulate(pkts[i])[0] == NH_IPV4
    assert inn.peek_seq() == (1 << 32) + 3
    # without ESN on the receiver the ICV fails (high bits differ)
    plain = EspSa(SPI, "aes-gcm-16", 128, ek)
    with pytest.raises(IntegrityError):
        plain.decapsulate(pkts[5])


def test_esn_mismatch_fails_integrity() -> None:
    ek, _ = keys("aes-gcm-16", 128, None)
    out = EspSa(SPI, "aes-gcm-16", 128, ek, esn=True)
    out._seq = 1 << 32
    inn = EspSa(SPI, "aes-gcm-16", 128, ek, esn=False)
    with pytest.raises(IntegrityError):
        inn.decapsulate(out.encapsulate(inner4(), NH_IPV4))


def test_no_esn_sequence_exhaustion_is_hard_expiry() -> None:
    hits: list[str] = []
    out, _ = pair("aes-gcm-16", 128, None)
    out.on_limit = hits.append
    out._seq = 0xFFFFFFFE
    out.encapsulate(inner4(), NH_IPV4)
    with pytest.raises(SaExpiredError, match="sequence number"):
        out.encapsulate(inner4(), NH_IPV4)
    assert hits == ["hard"] and out.hard_expired


def test_replay_window_edges() -> None:
    out, inn = pair("aes-gcm-16", 128, None, replay_window=32)
    pkts = [out.encapsulate(inner4(8), NH_IPV4) for _ in range(40)]  # seq 1..40
    inn.decapsulate(pkts[39])  # seq 40: top
    inn.decapsulate(pkts[8])  # seq 9: 40-9=31 -> last slot inside the window
    with pytest.raises(ReplayError, match="left of the replay window"):
        inn.decapsulate(pkts[7])  # seq 8: offset 32, outside
    with pytest.raises(ReplayError, match="already received"):
        inn.decapsulate(pkts[8])
    with pytest.raises(ReplayError, match="already received"):
        inn.decapsulate(pkts[39])
    for i in range(9, 39):
        inn.decapsulate(pkts[i])
    assert inn.packets == 32


def test_replayed_packet_with_bad_icv_does_not_move_window() -> None:
    out, inn = pair("aes-gcm-16", 128, None, replay_window=16)
    good = out.encapsulate(inner4(), NH_IPV4)
    forged = bytearray(out.encapsulate(inner4(), NH_IPV4))
    forged[4:8] = struct.pack(">I", 1000)  # a far-ahead sequence number with a broken ICV
    with pytest.raises(IntegrityError):
        inn.decapsulate(bytes(forged))
    assert inn.peek_seq() == 0
    assert inn.decapsulate(good)[0] == NH_IPV4


def test_replay_window_zero_disables_check() -> None:
    out, inn = pair("aes-gcm-16", 128, None, replay_window=0)
    p = out.encapsulate(inner4(), NH_IPV4)
    inn.decapsulate(p)
    inn.decapsulate(p)


@pytest.mark.parametrize(("encr", "keylen", "integ"), SUITES)
def test_tampering_anywhere_fails(encr: str, keylen: int, integ: str | None) -> None:
    out, inn = pair(encr, keylen, integ, replay_window=0)
    esp = out.encapsulate(inner4(100), NH_IPV4)
    for pos in (5, 9, 20, len(esp) // 2, len(esp) - 1):
        bad = bytearray(esp)
        bad[pos] ^= 0x01
        with pytest.raises(EspError):
            inn.decapsulate(bytes(bad))
    with pytest.raises(EspError):
        inn.decapsulate(esp[:-1])
    with pytest.raises(EspError, match="shorter"):
        inn.decapsulate(esp[:12])
    assert inn.packets == 0


def test_wrong_key_is_integrity_error() -> None:
    out, _ = pair("aes-cbc", 128, "hmac-sha2-256-128")
    ek, ik = keys("aes-cbc", 128, "hmac-sha2-256-128")
    with pytest.raises(IntegrityError, match="ICV"):
        EspSa(SPI, "aes-cbc", 128, ek, "hmac-sha2-256-128", ik).decapsulate(out.encapsulate(inner4(), 4))


def _gcm_packet(ek: bytes, seq: int, payload: bytes) -> bytes:
    """An ESP packet built by hand with a chosen (possibly wrong) trailer."""
    hdr = struct.pack(">IIQ", SPI, seq, seq)
    return hdr + AESGCM(ek[:16]).encrypt(ek[16:] + hdr[8:], payload, hdr[:8])


def test_bad_padding_is_refused() -> None:
    ek, _ = keys("aes-gcm-16", 128, None)
    inn = EspSa(SPI, "aes-gcm-16", 128, ek, replay_window=0)
    body = b"\x45" + bytes(19)
    assert inn.decapsulate(_gcm_packet(ek, 1, body + b"\x01\x02" + b"\x02\x04")) == (4, body)
    with pytest.raises(PaddingError, match="1, 2, 3"):
        inn.decapsulate(_gcm_packet(ek, 2, body + b"\x07\x07" + b"\x02\x04"))
    with pytest.raises(PaddingError, match="exceeds"):
        inn.decapsulate(_gcm_packet(ek, 3, b"\x01\x02" + b"\xff\x04"))


def test_ipv6_next_header_and_inner() -> None:
    out, inn = pair("chacha20-poly1305", 256, None)
    pkt = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP() / Raw(b"x" * 77))
    assert inn.decapsulate(out.encapsulate(pkt, NH_IPV6)) == (NH_IPV6, pkt)


def test_byte_and_packet_limits_fire_once_each() -> None:
    hits: list[str] = []
    lt = Lifetime(soft_bytes=250, hard_bytes=500, soft_packets=0, hard_packets=100)
    out, _ = pair("aes-gcm-16", 128, None, lifetime=lt, on_limit=hits.append)
    pkt = inner4(72)  # 100 bytes
    for _ in range(2):
        out.encapsulate(pkt, 4)
    assert hits == [] and not out.soft_expired
    out.encapsulate(pkt, 4)  # 300 >= 250
    assert hits == ["soft"] and out.soft_expired
    out.encapsulate(pkt, 4)
    out.encapsulate(pkt, 4)  # 500 >= 500
    assert hits == ["soft", "hard"] and out.hard_expired
    with pytest.raises(SaExpiredError):
        out.encapsulate(pkt, 4)


def test_packet_limit_and_time_limit() -> None:
    hits: list[str] = []
    out, inn = pair("aes-gcm-16", 128, None, lifetime=Lifetime(soft_packets=2, hard_s=10, soft_s=5), now=100.0)
    inn.on_limit = hits.append
    for _ in range(3):
        inn.decapsulate(out.encapsulate(inner4(), 4))
    assert hits == ["soft"]
    assert inn.next_time_limit() == 110.0
    assert inn.check_time(105.0) is None  # soft already fired by packets
    assert inn.check_time(110.0) == "hard" and hits == ["soft", "hard"]
    with pytest.raises(SaExpiredError):
        inn.decapsulate(out.encapsulate(inner4(), 4))


def test_lifetime_from_negotiated() -> None:
    lt = Lifetime.from_negotiated(3600, 1000)
    assert lt.hard_bytes == 1024000 and lt.soft_bytes == 921600 and lt.hard_s == 3600 and lt.soft_s == 3240


@pytest.mark.parametrize(("esn", "space"), [(False, 2**32 - 1), (True, 2**64 - 1)], ids=["32-bit", "esn"])
def test_negotiated_lifetime_limits_packets_to_the_sequence_space(esn: bool, space: int) -> None:
    # No negotiated packet limit: the sequence space is the hard one, the rekey comes well before it.
    lt = Lifetime.from_negotiated(3600, 0, esn=esn)
    assert lt.hard_packets == space
    assert space * 0.85 < lt.soft_packets < space * 0.95 and lt.soft_packets == space * 9 // 10
    assert (lt.hard_bytes, lt.soft_bytes) == (0, 0)  # no KB lifetime: bytes stay unlimited


def test_sequence_exhaustion_is_announced_by_a_soft_limit_first() -> None:
    # A sequence space of 20 stands in for 2^32 - 1: soft at packet 18, hard at 20, then nothing.
    hits: list[tuple[str, int]] = []
    lt = Lifetime.from_negotiated(3600, 0, seq_space=20)
    assert (lt.soft_packets, lt.hard_packets) == (18, 20)
    out, inn = pair("aes-gcm-16", 128, None, lifetime=lt)
    out.on_limit = lambda kind: hits.append((kind, out.packets))
    pkt = inner4()
    for _ in range(20):
        assert inn.decapsulate(out.encapsulate(pkt, 4))[1] == pkt
    assert hits == [("soft", 18), ("hard", 20)]
    with pytest.raises(SaExpiredError):
        out.encapsulate(pkt, 4)


def test_sequence_space_floor_keeps_soft_below_hard() -> None:
    lt = Lifetime.from_negotiated(0, 0, seq_space=2)
    assert (lt.soft_packets, lt.hard_packets) == (1, 2)


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((5, "aes-gcm-16", 128, bytes(20)), "reserved"),
        ((SPI, "rot13", 128, bytes(20)), "unknown ESP encryption"),
        ((SPI, "aes-gcm-16", 100, bytes(20)), "key lengths"),
        ((SPI, "aes-gcm-16", 128, bytes(16)), "20 bytes"),
        ((SPI, "aes-cbc", 128, bytes(16)), "needs an integrity"),
        ((SPI, "aes-cbc", 128, bytes(16), "hmac-sha1-96", bytes(5)), "20-byte key"),
    ],
)
def test_bad_parameters_are_named(args: tuple[object, ...], msg: str) -> None:
    with pytest.raises(EspError, match=msg):
        EspSa(*args)  # type: ignore[arg-type]
