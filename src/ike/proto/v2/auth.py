"""The AUTH payload's value (RFC 7296 §2.15, RFC 4754, RFC 7427, RFC 8420).

<SignedOctets> = RealMessage{1,2} | Nonce{R,I}Data | prf(SK_p{i,r}, ID payload body)
PSK:       prf(prf(secret, "Key Pad for IKEv2"), <SignedOctets>)
method 1:  RSA PKCS#1 v1.5 with SHA-1            methods 9/10/11: ECDSA P-256/384/521, raw r||s
method 14: len | AlgorithmIdentifier DER | signature (RSA PKCS#1 v1.5 or RSASSA-PSS, ECDSA DER, Ed25519)
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Collection

from cryptography.hazmat.primitives.asymmetric import ec

from ike.proto import certs, secretcache
from ike.proto.certs import AuthError, PrivateKey, PublicKey
from ike.proto.crypto import KeyedPrf, prf
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

# RSASSA-PSS (RFC 4055 §3.1, RFC 7427 appendix A.4): its AlgorithmIdentifier carries parameters
# (hash, MGF1 with a hash, salt length, trailer), so it is built and parsed rather than looked up.
_PSS_OID = bytes.fromhex("2a864886f70d01010a")
_MGF1_OID = bytes.fromhex("2a864886f70d010108")
_HASH_OIDS = {
    "sha1": bytes.fromhex("2b0e03021a"),
    "sha256": bytes.fromhex("608648016503040201"),
    "sha384": bytes.fromhex("608648016503040202"),
    "sha512": bytes.fromhex("608648016503040203"),
}
_HASH_BY_OID = {v: k for k, v in _HASH_OIDS.items()}
_HASH_LEN = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

_ECDSA_CLASSIC = {
    "secp256r1": (m.ECDSA_256, "sha256"),
    "secp384r1": (m.ECDSA_384, "sha384"),
    "secp521r1": (m.ECDSA_521, "sha512"),
}
_ECDSA_BY_METHOD = {v[0]: (k, v[1]) for k, v in _ECDSA_CLASSIC.items()}


def signed_octets(message: bytes, peer_nonce: bytes, prf_name: str, sk_p: bytes, id_body: bytes) -> bytes:
    return message + peer_nonce + prf(prf_name, sk_p, id_body)


@functools.lru_cache(maxsize=32)
def _psk_prf(prf_name: str, psk: bytes) -> KeyedPrf:
    # prf(secret, "Key Pad for IKEv2") depends on the secret alone: keyed once per PSK, not twice per IKE_AUTH.
    return KeyedPrf(prf_name, prf(prf_name, psk, KEY_PAD))


secretcache.register(_psk_prf.cache_clear)


def psk_auth(prf_name: str, psk: bytes, octets: bytes) -> bytes:
    return _psk_prf(prf_name, psk)(octets)


def verify_psk(prf_name: str, psk: bytes, octets: bytes, received: bytes) -> None:
    if not hmac.compare_digest(psk_auth(prf_name, psk, octets), received):
        raise AuthError("pre-shared key AUTH value does not match (wrong pre-shared key on one side?)")


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_next(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, contents, position after) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise AuthError("RSASSA-PSS parameters are truncated")
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 2 or pos + k > len(data):
            raise AuthError("RSASSA-PSS parameters have a bad length")
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise AuthError("RSASSA-PSS parameters are truncated")
    return tag, data[pos : pos + n], pos + n


def _hash_alg(body: bytes) -> str:
    """The hash of a hash AlgorithmIdentifier's contents (OID, NULL or absent parameters)."""
    tag, oid, pos = _der_next(body, 0)
    if tag == 0x06 and pos < len(body):
        ptag, pbody, pos = _der_next(body, pos)
        if ptag != 0x05 or pbody:
            tag = -1
    if tag != 0x06 or pos != len(body) or oid not in _HASH_BY_OID:
        raise AuthError(f"RSASSA-PSS uses hash {oid.hex()}, not SHA-1/SHA2-256/384/512")
    return _HASH_BY_OID[oid]


def _der_uint(body: bytes) -> int:
    if not body or len(body) > 4 or body[0] & 0x80:
        raise AuthError("RSASSA-PSS parameters hold a bad integer")
    return int.from_bytes(body, "big")


def pss_algorithm_identifier(hash_name: str) -> bytes:
    """RSASSA-PSS with `hash_name`, MGF1 with the same hash and a salt as long as the hash (as
    strongSwan sends it, and RFC 8247 recommends); the trailer field is the default."""
    h = _der(0x30, _der(0x06, _HASH_OIDS[hash_name]) + b"\x05\x00")
    mgf = _der(0x30, _der(0x06, _MGF1_OID) + h)
    salt = _der(0x02, _HASH_LEN[hash_name].to_bytes(1, "big"))
    return _der(0x30, _der(0x06, _PSS_OID) + _der(0x30, _der(0xA0, h) + _der(0xA1, mgf) + _der(0xA2, salt)))


def parse_pss(alg: bytes) -> tuple[str, int] | None:
    """(hash, salt length) of an RSASSA-PSS AlgorithmIdentifier, None for any other algorithm.
    Raises AuthError for PSS parameters we cannot use."""
    try:
        tag, body, end = _der_next(alg, 0)
        if tag != 0x30 or end != len(alg):
            return None
        tag, oid, pos = _der_next(body, 0)
    except AuthError:
        return None
    if tag != 0x06 or oid != _PSS_OID:
        return None
    h, mgf_h, salt, trailer = "sha1", "sha1", 20, 1  # RFC 4055 defaults for absent fields
    if pos < len(body):
        tag, params, end = _der_next(body, pos)
        if tag != 0x30 or end != len(body):
            raise AuthError("RSASSA-PSS parameters are not a SEQUENCE")
        pos, last = 0, -1
        while pos < len(params):
            tag, field, pos = _der_next(params, pos)
            if tag not in (0xA0, 0xA1, 0xA2, 0xA3) or tag <= last:
                raise AuthError(f"RSASSA-PSS parameters hold an unexpected field (tag {tag:#x})")
            last = tag
            ftag, inner, fend = _der_next(field, 0)
            if fend != len(field):
                raise AuthError("RSASSA-PSS parameter has trailing data")
            if tag == 0xA0 and ftag == 0x30:
                h = _hash_alg(inner)
            elif tag == 0xA1 and ftag == 0x30:
                mtag, moid, mpos = _der_next(inner, 0)
                if mtag != 0x06 or moid != _MGF1_OID or mpos >= len(inner):
                    raise AuthError("RSASSA-PSS mask generation function is not MGF1")
                htag, hbody, hend = _der_next(inner, mpos)
                if htag != 0x30 or hend != len(inner):
                    raise AuthError("RSASSA-PSS MGF1 hash is malformed")
                mgf_h = _hash_alg(hbody)
            elif tag == 0xA2 and ftag == 0x02:
                salt = _der_uint(inner)
            elif tag == 0xA3 and ftag == 0x02:
                trailer = _der_uint(inner)
            else:
                raise AuthError("RSASSA-PSS parameter has the wrong type")
    if mgf_h != h:
        raise AuthError(f"RSASSA-PSS with hash {h} but MGF1 with {mgf_h} is not supported (use the same hash)")
    if trailer != 1:
        raise AuthError(f"RSASSA-PSS trailer field {trailer} is not supported (only 1, 0xBC)")
    return h, salt


def is_pss(method: int, data: bytes) -> bool:
    """Whether a (verified) AUTH payload is an RSASSA-PSS signature."""
    if method != m.DIGITAL_SIGNATURE or not data or len(data) < 1 + data[0]:
        return False
    try:
        return parse_pss(data[1 : 1 + data[0]]) is not None
    except AuthError:
        return False


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


def sign_auth(
    key: PrivateKey, octets: bytes, peer_hashes: Collection[int] | None, pss: bool = False
) -> tuple[int, bytes]:
    """(AUTH method, AUTH data). RFC 7427 when the peer sent SIGNATURE_HASH_ALGORITHMS (and
    always for Ed25519), the classic methods 1 / 9-11 otherwise. `pss`: RSA keys sign with
    RSASSA-PSS under RFC 7427 (the classic method 1 has no PSS form)."""
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
    if pss and kind == "rsa":
        alg = pss_algorithm_identifier(h)
        return m.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + certs.sign(key, octets, h, pss_salt=_HASH_LEN[h])
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
        pss = parse_pss(alg)
        if pss is not None:
            if kind != "rsa":
                raise AuthError(f"peer signed with RSASSA-PSS but its certificate holds a {kind} key")
            certs.verify(public_key, sig, octets, pss[0], pss_salt=pss[1])
            return
        found = _ALG_BY_DER.get(alg)
        if found is None:
            raise AuthError(
                f"signature algorithm {alg.hex()} is not supported (RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519 are)"
            )
        akind, h = found
        if akind != kind:
            raise AuthError(f"peer signed with {akind} but its certificate holds a {kind} key")
        certs.verify(public_key, sig, octets, h)
    else:
        raise AuthError(f"authentication method {m.METHOD_NAMES.get(method, method)} is not supported")
