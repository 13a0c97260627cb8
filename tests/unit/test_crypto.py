"""Known-answer tests for ike.proto.crypto, every value published: HMAC (RFC 4231, RFC 2202), prf+
(RFC 7296 §2.13, computed independently here; the published CAVP IKEv2 vectors are in
tests/unit/v2/test_keys.py), AES-CBC 128/192/256 (NIST SP 800-38A F.2.1/F.2.3/F.2.5), AES-GCM
128/192/256 (the GCM specification's test cases 4, 10 and 16, McGrew-Viega, also in SP 800-38D
validation), ChaCha20-Poly1305 (RFC 8439 §2.8.2), 3DES-CBC (NIST TDES MMT samples), the MODP primes
(RFC 3526) and DH peer-value checks.

AEAD keys are cipher key | 4-byte salt and the 8-byte IKE/ESP IV completes the 12-byte nonce
(RFC 4106 §4, RFC 7634 §2): a published 12-byte nonce is split as salt (4) | IV (8)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ike.proto.crypto import CryptoError, DhPrivate, IkeCipher, hmac_digest, integ_icv, modp_prime, prf_plus
from ike.proto.transforms import DH

# RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
RFC4231_TC2 = {
    "sha256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    "sha384": "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
    "sha512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdca"
    "eab1a34d4a6b4b636e070a38bce737",
}


@pytest.mark.parametrize("h", list(RFC4231_TC2))
def test_hmac_rfc4231(h: str) -> None:
    assert hmac_digest(h, b"Jefe", b"what do ya want for nothing?").hex() == RFC4231_TC2[h]


def test_hmac_rfc2202_sha1() -> None:
    assert hmac_digest("sha1", b"Jefe", b"what do ya want for nothing?").hex() == (
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    )


def test_hmac_rfc2202_md5() -> None:
    # The weak hmac-md5 PRF / hmac-md5-96 integrity, used only when a definition names them.
    assert hmac_digest("md5", b"Jefe", b"what do ya want for nothing?").hex() == "750c783e6ab0b503eaa86e310a5db738"
    assert integ_icv("hmac-md5-96", b"Jefe", b"what do ya want for nothing?").hex() == "750c783e6ab0b503eaa86e31"


@pytest.mark.parametrize(
    ("name", "h"),
    [("hmac-sha1", "sha1"), ("hmac-sha2-256", "sha256"), ("hmac-sha2-384", "sha384"), ("hmac-sha2-512", "sha512")],
)
def test_prf_plus_matches_rfc_definition(name: str, h: str) -> None:
    key, seed = bytes(range(32)), b"seed" * 9
    want, t, i = b"", b"", 1
    while len(want) < 200:
        t = hmac.new(key, t + seed + bytes([i]), getattr(hashlib, h)).digest()
        want += t
        i += 1
    assert prf_plus(name, key, seed, 200) == want[:200]


def test_aes_cbc_sp800_38a() -> None:
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    c128 = IkeCipher("aes-cbc", bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
    assert c128.cbc_encrypt(iv, pt).hex() == "7649abac8119b246cee98e9b12e9197d"
    c256 = IkeCipher("aes-cbc", bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"))
    assert c256.cbc_encrypt(iv, pt).hex() == "f58c4c04d6e5f1ba779eabfb5f7bfbd6"
    assert c256.cbc_decrypt(iv, bytes.fromhex("f58c4c04d6e5f1ba779eabfb5f7bfbd6")) == pt
    with pytest.raises(CryptoError):
        c256.cbc_decrypt(iv, b"short")


# NIST SP 800-38A F.2.3 CBC-AES192.Encrypt / F.2.4 CBC-AES192.Decrypt: four blocks, IV 000102..0f.
SP800_38A_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)


def test_aes192_cbc_sp800_38a_f23() -> None:
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    c = IkeCipher("aes-cbc", bytes.fromhex("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"))
    ct = bytes.fromhex(
        "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a"
        "571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"
    )
    assert c.cbc_encrypt(iv, SP800_38A_PLAIN) == ct
    assert c.cbc_decrypt(iv, ct) == SP800_38A_PLAIN


# The GCM specification's test cases 10 (AES-192) and 16 (AES-256): 60-byte plaintext, 20-byte AAD,
# 96-bit IV cafebabefacedbaddecaf888.
GCM_PLAIN = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525"
    "b16aedf5aa0de657ba637b39"
)
GCM_AAD = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_CASES = {
    "test case 10 (AES-192)": (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c",
        "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c7d773d00c144c525ac619d18c84a3f47"
        "18e2448b2fe324d9ccda2710",
        "2519498e80f1478f37ba55bd6d27618c",
    ),
    "test case 16 (AES-256)": (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
        "c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
}


@pytest.mark.parametrize("case", list(GCM_CASES))
def test_aes_gcm_spec_with_aad(case: str) -> None:
    key, ct_hex, tag_hex = GCM_CASES[case]
    c = IkeCipher("aes-gcm-16", bytes.fromhex(key) + bytes.fromhex("cafebabe"))
    iv = bytes.fromhex("facedbaddecaf888")
    ct, tag = bytes.fromhex(ct_hex), bytes.fromhex(tag_hex)
    assert c.aead_encrypt(iv, GCM_PLAIN, GCM_AAD) == ct + tag
    assert c.aead_decrypt(iv, ct + tag, GCM_AAD) == GCM_PLAIN
    with pytest.raises(CryptoError):
        c.aead_decrypt(iv, ct + tag, GCM_AAD[:-1])


# NIST TDES MMT (TCBCMMT3) examples 1 and 2, three-key 3DES-CBC (as strongSwan's test vectors carry them).
TDES_CASES = [
    (
        "627f460e08104a1043cd265d5840eaf1313edf97df2a8a8c",
        "8e29f75ea77e5475",
        "326a494cd33fe756",
        "b22b8d66de970692",
    ),
    (
        "37ae5ebf46dff2dc0754b94f31cbb3855e7fd36dc870bfae",
        "3d1de3cc132e3b65",
        "84401f78fe6c10876d8ea23094ea5309",
        "7b1f7c7e3b1c948ebd04a75ffba7d2f5",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plain", "cipher"), TDES_CASES, ids=["mmt-1", "mmt-2"])
def test_3des_cbc_nist_mmt(key: str, iv: str, plain: str, cipher: str) -> None:
    c = IkeCipher("3des-cbc", bytes.fromhex(key))
    assert c.cbc_encrypt(bytes.fromhex(iv), bytes.fromhex(plain)).hex() == cipher
    assert c.cbc_decrypt(bytes.fromhex(iv), bytes.fromhex(cipher)).hex() == plain
    with pytest.raises(CryptoError):
        c.cbc_decrypt(bytes.fromhex(iv), bytes(12))  # not a multiple of the 8-byte block


def test_aes_gcm_test_case_4() -> None:
    # Key | 4-byte salt; the IKE/ESP 8-byte IV completes the 12-byte nonce (RFC 4106 §4).
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308") + bytes.fromhex("cafebabe")
    iv = bytes.fromhex("facedbaddecaf888")
    pt = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525"
        "b16aedf5aa0de657ba637b39"
    )
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    ct = bytes.fromhex(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa05"
        "1ba30b396a0aac973d58e091"
    )
    tag = bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47")
    c = IkeCipher("aes-gcm-16", key)
    assert c.aead_encrypt(iv, pt, aad) == ct + tag
    assert c.aead_decrypt(iv, ct + tag, aad) == pt
    with pytest.raises(CryptoError):
        c.aead_decrypt(iv, ct + bytes(16), aad)


def test_chacha20_poly1305_rfc8439_2_8_2() -> None:
    key = bytes(range(0x80, 0xA0)) + bytes.fromhex("07000000")
    iv = bytes.fromhex("4041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    pt = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    ct = bytes.fromhex(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    tag = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")
    c = IkeCipher("chacha20-poly1305", key)
    assert c.aead_encrypt(iv, pt, aad) == ct + tag
    assert c.aead_decrypt(iv, ct + tag, aad) == pt
    with pytest.raises(CryptoError):
        c.aead_decrypt(iv, ct + tag, aad + b"x")


def test_modp_primes_rfc3526() -> None:
    p14 = modp_prime(14).to_bytes(256, "big").hex().upper()
    assert p14.startswith("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1")
    assert p14.endswith("15728E5A8AACAA68FFFFFFFFFFFFFFFF")
    p2 = modp_prime(2).to_bytes(128, "big").hex().upper()
    assert p2.endswith("49286651ECE65381FFFFFFFFFFFFFFFF")
    for g in (15, 16):
        assert modp_prime(g).bit_length() == DH[g].public_len * 8


@pytest.mark.parametrize("group", sorted(DH))
def test_dh_agreement(group: int) -> None:
    a, b = DhPrivate(group), DhPrivate(group)
    assert len(a.public) == DH[group].public_len
    assert a.shared(b.public) == b.shared(a.public)


@pytest.mark.parametrize(
    ("group", "bad"),
    [
        (14, (1).to_bytes(256, "big")),
        (14, (modp_prime(14) - 1).to_bytes(256, "big")),
        (14, bytes(255)),
        (19, bytes(64)),  # not on the curve
        (19, b"\x01" * 64),
        (20, b"\x02" * 96),
        (31, bytes(32)),  # all-zero shared secret
        (32, bytes(56)),
        (31, bytes(31)),
    ],
)
def test_dh_rejects_invalid_peer_values(group: int, bad: bytes) -> None:
    with pytest.raises(CryptoError):
        DhPrivate(group).shared(bad)


def test_weak_entries_are_the_legacy_ones() -> None:
    from ike.proto.transforms import ENCR, INTEG, PRF

    weak = {n for t in (ENCR, INTEG, PRF) for n, e in t.items() if e.weak} | {g.name for g in DH.values() if g.weak}
    assert weak == {"3des-cbc", "hmac-md5-96", "hmac-md5", "modp1024", "modp1536"}
