"""Crypto primitives both engines use, all through the `cryptography` package.

- `prf`, `prf_plus`: HMAC-based PRFs and RFC 7296 §2.13 prf+.
- `DhPrivate`: a Diffie-Hellman / ECDH key pair for one exchange, with peer-value validation.
- `IkeCipher`: the SK payload / IKEv1 phase 1 encryption (CBC with explicit IV, or AEAD).
"""

from __future__ import annotations

import functools
import hmac as _hmac
import os
import warnings
from collections.abc import Callable

# cryptography imports its OpenSSL backend object inside the first X25519, X448 or ECDH key it
# generates: 3-6 ms of the first negotiation, on both sides of the first activation after iked
# starts. Imported with this module, it comes in at daemon start, where the engines are preloaded.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.utils import CryptographyDeprecationWarning

from ike.proto.transforms import DH, ENCR, INTEG, PRF

try:  # cryptography >= 43 keeps 3DES among the "decrepit" ciphers (it is only used when configured)
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    TripleDES = algorithms.TripleDES  # type: ignore[attr-defined,misc]

# MODP groups 14-16 are what RFC 8247 peers (and strongSwan's defaults) offer; cryptography 50 warns on
# every finite-field DH call. The use is deliberate, so the warning is silenced here and nowhere else.
warnings.filterwarnings("ignore", message="Diffie-Hellman over finite fields", category=CryptographyDeprecationWarning)

__all__ = [
    "CryptoError",
    "DhPrivate",
    "IkeCipher",
    "InvalidSignature",
    "InvalidTag",
    "KeyedPrf",
    "TripleDES",
    "hash_bytes",
    "hmac_digest",
    "integ_icv",
    "modp_prime",
    "prf",
    "prf_plus",
    "random_bytes",
    "verify_icv",
]


class CryptoError(ValueError):
    """A value from the peer failed a cryptographic check (bad DH value, bad ICV, bad padding)."""


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Hash algorithm objects hold no state (HMAC and Hash keep their own), so one per name serves every call.
_HASH_OBJECTS: dict[str, hashes.HashAlgorithm] = {name: make() for name, make in _HASHES.items()}


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    return _HASHES[name]()


def hash_bytes(name: str, data: bytes) -> bytes:
    h = hashes.Hash(_HASHES[name]())
    h.update(data)
    return h.finalize()


def hmac_digest(hash_name: str, key: bytes, data: bytes) -> bytes:
    h = c_hmac.HMAC(key, _HASH_OBJECTS[hash_name])
    h.update(data)
    return h.finalize()


def prf(name: str, key: bytes, data: bytes) -> bytes:
    """The negotiated PRF (`name` is a key of transforms.PRF)."""
    return hmac_digest(PRF[name].hash, key, data)


class KeyedPrf:
    """prf(key, ·) for one key used many times: the HMAC is keyed once and copied for each value."""

    def __init__(self, name: str, key: bytes) -> None:
        self._keyed = c_hmac.HMAC(key, _HASH_OBJECTS[PRF[name].hash])

    def __call__(self, data: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(data)
        return h.finalize()


def prf_plus(name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n). Every prf here is an HMAC, and
    with an HMAC this is HKDF-Expand(PRK = K, info = S) of RFC 5869 §2.3, which `cryptography` computes
    in one call instead of one HMAC object per block."""
    p = PRF[name]
    if -(-length // p.out_len) > 255:
        raise ValueError("prf+ cannot produce that much keying material")
    if length <= 0:
        return b""
    return HKDFExpand(_HASH_OBJECTS[p.hash], length, seed).derive(key)


def integ_icv(name: str, key: bytes, data: bytes) -> bytes:
    i = INTEG[name]
    return hmac_digest(i.hash, key, data)[: i.icv_len]


def verify_icv(name: str, key: bytes, data: bytes, icv: bytes) -> bool:
    return _hmac.compare_digest(integ_icv(name, key, data), icv)


# --- Diffie-Hellman -------------------------------------------------------------------------------

# RFC 2409 §6 / RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k), generator 2.
_MODP_K = {2: (1024, 129093), 5: (1536, 741804), 14: (2048, 124476), 15: (3072, 1690314), 16: (4096, 240904)}


def _pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula in integer arithmetic (64 guard bits)."""
    one = 1 << (bits + 64)

    def atan_inv(x: int) -> int:
        total = term = one // x
        x2, n, sign = x * x, 1, -1
        while term:
            term //= x2
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


@functools.cache
def modp_prime(group: int) -> int:
    n, k = _MODP_K[group]
    p: int = 2**n - 2 ** (n - 64) - 1 + 2**64 * (_pi_fixed(n - 130) + k)
    return p


@functools.cache
def _modp_parameters(group: int) -> dh.DHParameters:
    return dh.DHParameterNumbers(modp_prime(group), 2).parameters()


_CURVES: dict[int, Callable[[], ec.EllipticCurve]] = {
    19: ec.SECP256R1,
    20: ec.SECP384R1,
    21: ec.SECP521R1,
}


class DhPrivate:
    """Our half of one key exchange. `public` is the KE payload data; `shared(peer)` validates the
    peer's value and returns g^xy (RFC 5903 §7: for ECP only the x coordinate)."""

    def __init__(self, group: int) -> None:
        if group not in DH:
            raise ValueError(f"unsupported DH group {group}")
        self.group = group
        g = DH[group]
        # One typed slot per kind (the others None): shared() needs no isinstance check of an ABC.
        self._modp: dh.DHPrivateKey | None = None
        self._ecp: ec.EllipticCurvePrivateKey | None = None
        self._x25519: x25519.X25519PrivateKey | None = None
        self._x448: x448.X448PrivateKey | None = None
        if g.kind == "x25519":
            xk = self._x25519 = x25519.X25519PrivateKey.generate()
            self.public = xk.public_key().public_bytes_raw()
        elif g.kind == "modp":
            k = self._modp = _modp_parameters(group).generate_private_key()
            self.public = k.public_key().public_numbers().y.to_bytes(g.public_len, "big")
        elif g.kind == "ecp":
            ek = self._ecp = ec.generate_private_key(_CURVES[group]())
            nums = ek.public_key().public_numbers()
            half = g.public_len // 2
            self.public = nums.x.to_bytes(half, "big") + nums.y.to_bytes(half, "big")
        else:
            xk4 = self._x448 = x448.X448PrivateKey.generate()
            self.public = xk4.public_key().public_bytes_raw()

    def shared(self, peer: bytes) -> bytes:
        g = DH[self.group]
        if len(peer) != g.public_len:
            raise CryptoError(f"DH group {g.number} public value is {len(peer)} bytes, expected {g.public_len}")
        try:
            if self._x25519 is not None:
                return self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            if self._modp is not None:
                p = modp_prime(self.group)
                y = int.from_bytes(peer, "big")
                if not 1 < y < p - 1:
                    raise CryptoError(f"DH group {g.number} public value is out of range (RFC 6989 check)")
                pub = dh.DHPublicNumbers(y, _modp_parameters(self.group).parameter_numbers()).public_key()
                return self._modp.exchange(pub).rjust(g.public_len, b"\0")
            if self._ecp is not None:
                # from_encoded_point checks that the point is on the curve.
                point = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.group](), b"\x04" + peer)
                return self._ecp.exchange(ec.ECDH(), point)
            if self._x448 is None:  # never: __init__ fills the slot of its group's kind
                raise RuntimeError(f"DH group {g.number} has no private key")
            return self._x448.exchange(x448.X448PublicKey.from_public_bytes(peer))
        except CryptoError:
            raise
        except ValueError as e:  # invalid point, all-zero X25519 result, ...
            raise CryptoError(f"DH group {g.number} public value rejected: {e}") from None


# --- IKE message encryption -----------------------------------------------------------------------


class IkeCipher:
    """Encrypts IKE payloads for one direction of one SA.

    CBC (RFC 7296 §3.14, RFC 2409 appendix B) takes a separate integrity check; AEAD (RFC 5282 for
    AES-GCM, RFC 7634 for ChaCha20-Poly1305) uses `key` = cipher key + 4-byte salt and the IKE header
    through the end of the SK payload header as associated data. Objects are built once per SA.
    """

    def __init__(self, encr: str, key: bytes) -> None:
        self.t = ENCR[encr]
        self.aead = self.t.aead
        self.iv_size = self.t.iv_size
        self.block_size = 16 if encr == "aes-cbc" else (8 if encr == "3des-cbc" else 1)
        self.icv_size = self.t.icv_size
        if self.aead:
            self._salt = key[-self.t.salt_size :]
            ck = key[: -self.t.salt_size]
            self._aead: AESGCM | ChaCha20Poly1305 = AESGCM(ck) if encr == "aes-gcm-16" else ChaCha20Poly1305(ck)
        else:
            # The algorithm object is immutable: made once per key, not per message (IKEv1 seals and
            # opens five messages a negotiation, and each construction checks its key in Python).
            self._algo: algorithms.AES | TripleDES = algorithms.AES(key) if encr == "aes-cbc" else TripleDES(key)

    def cbc_encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        enc = Cipher(self._algo, modes.CBC(iv)).encryptor()
        return enc.update(plaintext) + enc.finalize()

    def cbc_decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        if not ciphertext or len(ciphertext) % self.block_size:
            raise CryptoError(f"ciphertext length {len(ciphertext)} is not a multiple of the block size")
        dec = Cipher(self._algo, modes.CBC(iv)).decryptor()
        return dec.update(ciphertext) + dec.finalize()

    def aead_encrypt(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Returns ciphertext || ICV."""
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, data, aad)
        except InvalidTag:
            raise CryptoError("AEAD integrity check failed") from None
