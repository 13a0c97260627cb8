"""The AUTH payload's value (RFC 7296 §2.15, RFC 4754, RFC 7427, RFC 8420).

<SignedOctets> = RealMessage{1,2} | Nonce{R,I}Data | prf(SK_p{i,r}, ID payload body)
PSK:       prf(prf(secret, "Key Pad for IKEv2"), <SignedOctets>)
method 1:  RSA PKCS#1 v1.5 with SHA-1            methods 9/10/11: ECDSA P-256/384/521, raw r||s
method 14: len | AlgorithmIdentifier DER | signature (RSA PKCS#1 v1.5, ECDSA DER, Ed25519)
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from cryptography.hazmat.primitives.asymmetric import ec

from ike.proto import certs
from ike.proto.certs import AuthError, PrivateKey, PublicKey
from ike.proto.crypto import prf
from ike.proto.v2.payloads import auth as m

KEY_PAD = b"Key Pad for IKEv2"

# RFC 7427 §3 SIGNATURE_HASH_ALGORITHMS values
HASH_SHA1 = 1
HASH_SHA256 = 2
HASH_SHA384 = 3
HASH_SHA512 = 4
HASH_IDENTITY = 5
HASH_IDS = {"sha1": HASH_SHA1, "sha256": HASH_SHA256, "sha384": HASH_SHA384, "sha512": HASH_SHA512}
OUR_HASHES = (HASH_SHA256, HASH_SHA384, HASH_SHA512, HASH_IDENTITY)

# DER AlgorithmIdentifiers (RFC 7427 appendix A): (kind, hash) <-> bytes
_RSA_OID = bytes.fromhex("2a864886f70d0101")
_ALG_IDS: dict[tuple[str, str], bytes] = {
    ("rsa", "sha1"): bytes.fromhex("300d06092a864886f70d0101050500"),
    ("rsa", "sha256"): bytes.fromhex("300d06092a864886f70d01010b0500"),
    ("rsa", "sha384"): bytes.fromhex("300d06092a864886f70d01010c0500"),
    ("rsa", "sha512"): bytes.fromhex("300d06092a864886f70d01010d0500"),
    ("ecdsa", "sha1"): bytes.fromhex("300906072a8648ce3d0401"),
    ("ecdsa", "sha256"): bytes.fromhex("300a06082a8648ce3d040302"),
    ("ecdsa", "sha384"): bytes.fromhex("300a06082a8648ce3d040303"),
    ("ecdsa", "sha512"): bytes.fromhex("300a06082a8648ce3d040304"),
    ("ed25519", "identity"): bytes.fromhex("300506032b6570"),
}
_ALG_BY_DER = {v: k for k, v in _ALG_IDS.items()}
# RSA AlgorithmIdentifiers are also sent without the NULL parameters by some peers.
_ALG_BY_DER.update({v[:-2].replace(b"\x30\x0d", b"\x30\x0b", 1): k for k, v in _ALG_IDS.items() if k[0] == "rsa"})

_ECDSA_CLASSIC = {
    "secp256r1": (m.ECDSA_256, "sha256"),
    "secp384r1": (m.ECDSA_384, "sha384"),
    "secp521r1": (m.ECDSA_521, "sha512"),
}
_ECDSA_BY_METHOD = {v[0]: (k, v[1]) for k, v in _ECDSA_CLASSIC.items()}


def signed_octets(message: bytes, peer_nonce: bytes, prf_name: str, sk_p: bytes, id_body: bytes) -> bytes:
    return message + peer_nonce + prf(prf_name, sk_p, id_body)


def psk_auth(prf_name: str, psk: bytes, octets: bytes) -> bytes:
    return prf(prf_name, prf(prf_name, psk, KEY_PAD), octets)


def verify_psk(prf_name: str, psk: bytes, octets: bytes, received: bytes) -> None:
    if not hmac.compare_digest(psk_auth(prf_name, psk, octets), received):
        raise AuthError("pre-shared key AUTH value does not match (wrong pre-shared key on one side?)")


def _pick_hash(key: PrivateKey, peer_hashes: Collection[int]) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # Match the hash to the curve strength as RFC 4754 does, if the peer takes it.
        pref = {"secp384r1": "sha384", "secp521r1": "sha512"}.get(key.curve.name, "sha256")
        if HASH_IDS[pref] in peer_hashes:
            return pref
    for name in ("sha256", "sha384", "sha512"):
        if HASH_IDS[name] in peer_hashes:
            return name
    raise AuthError("the peer supports none of the signature hashes SHA2-256/384/512 (RFC 7427)")


def sign_auth(key: PrivateKey, octets: bytes, peer_hashes: Collection[int] | None) -> tuple[int, bytes]:
    """(AUTH method, AUTH data). RFC 7427 when the peer sent SIGNATURE_HASH_ALGORITHMS (and
    always for Ed25519), the classic methods 1 / 9-11 otherwise."""
    kind = certs.key_kind(key)
    if kind == "ed25519":
        if peer_hashes is not None and HASH_IDENTITY not in peer_hashes:
            raise AuthError("the peer did not announce the 'identity' hash needed for Ed25519 (RFC 8420)")
        alg = _ALG_IDS[("ed25519", "identity")]
        return m.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + certs.sign(key, octets, "sha512")
    if peer_hashes is None:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _ECDSA_CLASSIC:
                raise AuthError(f"curve {key.curve.name} has no classic IKEv2 ECDSA method")
            method, h = _ECDSA_CLASSIC[key.curve.name]
            return method, certs.ecdsa_der_to_raw(certs.sign(key, octets, h), key.curve)
        return m.RSA_SIG, certs.sign(key, octets, "sha1")
    h = _pick_hash(key, peer_hashes)
    alg = _ALG_IDS[(kind, h)]
    return m.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + certs.sign(key, octets, h)


def verify_auth(method: int, data: bytes, public_key: PublicKey, octets: bytes) -> None:
    """Raise AuthError unless `data` is a valid signature AUTH of `octets` by `public_key`."""
    kind = certs.key_kind(public_key)
    if method == m.RSA_SIG:
        if kind != "rsa":
            raise AuthError(f"peer used the RSA signature method with a {kind} certificate")
        certs.verify(public_key, data, octets, "sha1")
    elif method in _ECDSA_BY_METHOD:
        curve, h = _ECDSA_BY_METHOD[method]
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve:
            raise AuthError(f"peer used {m.METHOD_NAMES[method]} but its certificate key is not {curve}")
        certs.verify(public_key, certs.ecdsa_raw_to_der(data, public_key.curve), octets, h)
    elif method == m.DIGITAL_SIGNATURE:
        if not data or len(data) < 1 + data[0]:
            raise AuthError("digital signature AUTH data is too short for its AlgorithmIdentifier")
        alg = data[1 : 1 + data[0]]
        sig = data[1 + data[0] :]
        found = _ALG_BY_DER.get(alg)
        if found is None:
            raise AuthError(f"signature algorithm {alg.hex()} is not supported (RSA PKCS#1, ECDSA, Ed25519 are)")
        akind, h = found
        if akind != kind:
            raise AuthError(f"peer signed with {akind} but its certificate holds a {kind} key")
        certs.verify(public_key, sig, octets, h)
    else:
        raise AuthError(f"authentication method {m.METHOD_NAMES.get(method, method)} is not supported")
