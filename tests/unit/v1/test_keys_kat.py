"""Known-answer tests for RFC 2409 key derivation, each value computed independently here with the
standard library (hmac/hashlib) and `cryptography`'s AES, and an end-to-end check that decrypts a
real main mode + quick mode exchange in the test and recomputes HASH_I, HASH(1) and the KEYMAT."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ike.proto import crypto
from ike.proto.api import ChildSaEstablished
from ike.proto.v1 import keys
from ike.proto.v1.encryption import decrypt_message, encrypt_message
from ike.proto.v1.payloads import Exchange, Header
from ike.proto.v1.payloads.header import HEADER_LEN

from .pair import PSK, Pair, basic, policies_b

NI = bytes(range(1, 33))
NR = bytes(range(101, 133))
GXY = bytes((i * 7) & 0xFF for i in range(256))
CKY_I = bytes.fromhex("0102030405060708")
CKY_R = bytes.fromhex("a1a2a3a4a5a6a7a8")


def H(alg: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, alg).digest()


@pytest.mark.parametrize(
    ("prf", "alg"),
    [("hmac-sha1", "sha1"), ("hmac-sha2-256", "sha256"), ("hmac-sha2-384", "sha384"), ("hmac-sha2-512", "sha512")],
)
def test_skeyid_variants_and_derived(prf: str, alg: str) -> None:
    assert keys.skeyid_psk(prf, PSK, NI, NR) == H(alg, PSK, NI + NR)
    sk = keys.skeyid_sig(prf, NI, NR, GXY)
    assert sk == H(alg, NI + NR, GXY)
    d = H(alg, sk, GXY + CKY_I + CKY_R + b"\x00")
    a = H(alg, sk, d + GXY + CKY_I + CKY_R + b"\x01")
    e = H(alg, sk, a + GXY + CKY_I + CKY_R + b"\x02")
    got = keys.derive_skeyids(prf, sk, GXY, CKY_I, CKY_R)
    assert (got.d, got.a, got.e) == (d, a, e)


def test_cipher_key_expansion_appendix_b() -> None:
    e = H("sha1", b"k", b"x")  # 20 bytes, too short for AES-256
    k1 = H("sha1", e, b"\x00")
    k2 = H("sha1", e, k1)
    assert keys.encryption_key("hmac-sha1", e, 32) == (k1 + k2)[:32]
    e256 = H("sha256", b"k", b"x")
    assert keys.encryption_key("hmac-sha2-256", e256, 32) == e256
    assert keys.encryption_key("hmac-sha2-256", e256, 16) == e256[:16]
    e384 = H("sha384", b"k", b"x")
    assert keys.encryption_key("hmac-sha2-384", e384, 32) == e384[:32]


def test_3des_cbc_known_answer() -> None:
    """TDEA (three keys) in CBC mode: NIST's example values for SP 800-38A CBC with TDES
    (csrc.nist.gov .../documents/examples/TDES_CBC.pdf), as IKEv1 uses it (RFC 2409 appendix B:
    the message body after the header, zero-padded to 8 bytes; here exactly four blocks)."""
    key = bytes.fromhex("0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123")
    iv = bytes.fromhex("F69F2445DF4F9B17")
    pt = bytes.fromhex("6BC1BEE22E409F96 E93D7E117393172A AE2D8A571E03AC9C 9EB76FAC45AF8E51")
    ct = bytes.fromhex("2079C3D53AA763E1 93B79E2569AB5262 516570481F25B50F 73C0BDA85C8E0DA7")
    c = crypto.IkeCipher("3des-cbc", key)
    assert c.block_size == 8
    assert c.cbc_encrypt(iv, pt) == ct and c.cbc_decrypt(iv, ct) == pt
    h = Header(CKY_I, CKY_R, 8, Exchange.INFORMATIONAL, 0, 1)
    msg = encrypt_message(h, pt, c, iv)
    assert msg[HEADER_LEN:] == ct and decrypt_message(msg, c, iv) == pt
    # SKEYID_e stretched to the 24-byte 3DES key (appendix B), SHA-1 gives 20 bytes
    e = H("sha1", b"k", b"x")
    k1 = H("sha1", e, b"\x00")
    assert keys.encryption_key("hmac-sha1", e, 24) == (k1 + H("sha1", e, k1))[:24]


def test_ivs() -> None:
    gxi, gxr = b"\x11" * 256, b"\x22" * 256
    assert keys.phase1_iv("hmac-sha2-256", gxi, gxr, 16) == hashlib.sha256(gxi + gxr).digest()[:16]
    assert keys.phase1_iv("hmac-sha1", gxi, gxr, 8) == hashlib.sha1(gxi + gxr).digest()[:8]
    last = b"\x33" * 16
    assert keys.exchange_iv("hmac-sha1", last, 0x01020304, 16) == hashlib.sha1(last + b"\x01\x02\x03\x04").digest()[:16]


@pytest.mark.parametrize("pfs", [b"", b"\x44" * 32])
@pytest.mark.parametrize("length", [36, 52, 96, 160])
def test_keymat_with_and_without_pfs_expanded(pfs: bytes, length: int) -> None:
    skeyid_d = b"\x55" * 20
    spi = b"\xde\xad\xbe\xef"
    seed = pfs + bytes([3]) + spi + NI + NR
    out = b""
    k = b""
    while len(out) < length:
        k = H("sha1", skeyid_d, k + seed)
        out += k
    assert keys.keymat("hmac-sha1", skeyid_d, 3, spi, NI, NR, length, pfs) == out[:length]


# --- end to end: decrypt our own exchange with independent code ------------------------------------


def _payloads(first: int, data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(type, body, whole payload) walking the generic headers."""
    out = []
    np, pos = first, 0
    while np:
        nxt, _, ln = struct.unpack_from("!BBH", data, pos)
        out.append((np, data[pos + 4 : pos + ln], data[pos : pos + ln]))
        np, pos = nxt, pos + ln
    return out


def _aes_cbc_decrypt(key: bytes, iv: bytes, ct: bytes) -> bytes:
    d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return d.update(ct) + d.finalize()


def test_main_and_quick_mode_recomputed_independently(monkeypatch: pytest.MonkeyPatch) -> None:
    shared: list[bytes] = []
    real = crypto.DhPrivate.shared

    def recording(self: crypto.DhPrivate, peer: bytes) -> bytes:
        v = real(self, peer)
        shared.append(v)
        return v

    monkeypatch.setattr(crypto.DhPrivate, "shared", recording)
    a1, a2, b1, b2 = basic()  # aes-cbc-256 / sha2-256 / dh14; esp aes-128 + sha1
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    child = p.events("a", ChildSaEstablished)[0]
    msgs: list[bytes] = []
    for _, dg in p.log:  # keep one of each (retransmissions)
        if dg.data not in msgs:
            msgs.append(dg.data)
    mm1, _mm2, mm3, mm4, mm5, mm6, qm1, qm2 = msgs[:8]
    cky_i, cky_r = mm5[0:8], mm5[8:16]
    sai_b = _payloads(mm1[16], mm1[28:])[0][1]
    p3 = {t: b for t, b, _ in _payloads(mm3[16], mm3[28:])}
    p4 = {t: b for t, b, _ in _payloads(mm4[16], mm4[28:])}
    gxi, ni, gxr, nr = p3[4], p3[10], p4[4], p4[10]
    gxy = shared[0]
    assert shared[0] == shared[1]  # both sides computed the same g^xy
    skeyid = H("sha256", PSK, ni + nr)
    d = H("sha256", skeyid, gxy + cky_i + cky_r + b"\x00")
    a = H("sha256", skeyid, d + gxy + cky_i + cky_r + b"\x01")
    e = H("sha256", skeyid, a + gxy + cky_i + cky_r + b"\x02")
    key = e[:32]
    iv = hashlib.sha256(gxi + gxr).digest()[:16]
    assert mm5[19] & 1
    plain5 = _aes_cbc_decrypt(key, iv, mm5[28:])
    p5 = _payloads(mm5[16], plain5)
    idii_b = next(b for t, b, _ in p5 if t == 5)
    hash_i = next(b for t, b, _ in p5 if t == 8)
    assert hash_i == H("sha256", skeyid, gxi + gxr + cky_i + cky_r + sai_b + idii_b)
    iv6 = mm5[-16:]
    plain6 = _aes_cbc_decrypt(key, iv6, mm6[28:])
    p6 = _payloads(mm6[16], plain6)
    idir_b = next(b for t, b, _ in p6 if t == 5)
    assert next(b for t, b, _ in p6 if t == 8) == H("sha256", skeyid, gxr + gxi + cky_r + cky_i + sai_b + idir_b)
    # quick mode: IV from the last phase 1 block and the message ID
    mid = qm1[20:24]
    qiv = hashlib.sha256(mm6[-16:] + mid).digest()[:16]
    plain_q1 = _aes_cbc_decrypt(key, qiv, qm1[28:])
    q1 = _payloads(qm1[16], plain_q1)
    assert q1[0][0] == 8
    assert q1[0][1] == H("sha256", a, mid + b"".join(w for _, _, w in q1[1:]))
    ni_b = next(b for t, b, _ in q1 if t == 10)
    spi_i = next(b for t, b, _ in q1 if t == 1)[8 + 8 : 8 + 12]  # DOI, sit, proposal header, SPI
    plain_q2 = _aes_cbc_decrypt(key, qm1[-16:], qm2[28:])
    q2 = _payloads(qm2[16], plain_q2)
    assert q2[0][1] == H("sha256", a, mid + ni_b + b"".join(w for _, _, w in q2[1:]))
    nr_b = next(b for t, b, _ in q2 if t == 10)
    spi_r = next(b for t, b, _ in q2 if t == 1)[16:20]
    assert child.inbound.spi == spi_i and child.outbound.spi == spi_r

    def km(spi: bytes, n: int) -> bytes:
        out, k = b"", b""
        while len(out) < n:
            k = H("sha256", d, k + b"\x03" + spi + ni_b + nr_b)
            out += k
        return out[:n]

    assert child.inbound.enc_key + child.inbound.integ_key == km(spi_i, 16 + 20)
    assert child.outbound.enc_key + child.outbound.integ_key == km(spi_r, 16 + 20)
