"""SKEYSEED, SK_* and KEYMAT derivation (RFC 7296 §2.13-2.18) against an independent computation."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ike.policy import EspProposal, IkeProposal
from ike.proto.v2.keys import derive_child_keys, derive_ike_keys, skeyseed, skeyseed_rekey


def prf(h: str, k: bytes, d: bytes) -> bytes:
    return hmac.new(k, d, getattr(hashlib, h)).digest()


def prfplus(h: str, k: bytes, s: bytes, n: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = prf(h, k, t + s + bytes([i]))
        out += t
        i += 1
    return out[:n]


NI, NR = bytes.fromhex("00" * 15 + "01") * 2, bytes.fromhex("ff" * 16) * 2
SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")
G_IR = bytes(range(256))

# (proposal, hash, SK_a len, SK_e len incl. salt, SK_d/SK_p len)
CASES = [
    (IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14), "sha1", 20, 16, 20),
    (IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19), "sha256", 32, 32, 32),
    (IkeProposal("aes-cbc", 192, "hmac-sha2-384-192", "hmac-sha2-384", 20), "sha384", 48, 24, 48),
    (IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-512", 31), "sha512", 0, 36, 64),
    (IkeProposal("chacha20-poly1305", 256, None, "hmac-sha2-256", 32), "sha256", 0, 36, 32),
]


@pytest.mark.parametrize(("p", "h", "a", "e", "pk"), CASES, ids=[str(c[0]) for c in CASES])
def test_ike_keys(p: IkeProposal, h: str, a: int, e: int, pk: int) -> None:
    seed = prf(h, NI + NR, G_IR)
    assert skeyseed(p.prf, NI, NR, G_IR) == seed
    km = prfplus(h, seed, NI + NR + SPI_I + SPI_R, 3 * pk + 2 * a + 2 * e)
    k = derive_ike_keys(p, seed, NI, NR, SPI_I, SPI_R)
    want = []
    pos = 0
    for n in (pk, a, a, e, e, pk, pk):
        want.append(km[pos : pos + n])
        pos += n
    assert [k.sk_d, k.sk_ai, k.sk_ar, k.sk_ei, k.sk_er, k.sk_pi, k.sk_pr] == want


def test_rekey_skeyseed() -> None:
    old_d = bytes(32)
    assert skeyseed_rekey("hmac-sha2-256", old_d, G_IR, NI, NR) == prf("sha256", old_d, G_IR + NI + NR)


@pytest.mark.parametrize("pfs", [b"", G_IR])
def test_child_keymat(pfs: bytes) -> None:
    p = EspProposal("aes-cbc", 128, "hmac-sha2-256-128")
    sk_d = bytes(range(32))
    km = prfplus("sha256", sk_d, pfs + NI + NR, 2 * (16 + 32))
    k = derive_child_keys("hmac-sha2-256", sk_d, p, NI, NR, pfs)
    assert (k.encr_i, k.integ_i, k.encr_r, k.integ_r) == (km[:16], km[16:48], km[48:64], km[64:])
    g = derive_child_keys("hmac-sha2-256", sk_d, EspProposal("aes-gcm-16", 256, None), NI, NR, pfs)
    km2 = prfplus("sha256", sk_d, pfs + NI + NR, 72)
    assert (g.encr_i, g.integ_i, g.encr_r) == (km2[:36], b"", km2[36:])
