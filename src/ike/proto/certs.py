"""X.509 certificates and signatures for both engines (IKEv1 RSA/ECDSA signature modes, IKEv2 AUTH).

Everything goes through `cryptography`. Chains are checked explicitly (signature of each link,
validity dates, CA basic constraints) rather than with `cryptography.x509.verification`, whose
web-PKI policy demands server names and key usages that IKE certificates often lack.

Signature helpers take a hash name from `ike.proto.crypto` ("sha1", "sha256", ...):
- RSA: PKCS#1 v1.5 (IKEv1, IKEv2 auth method 1, RFC 7427 with the rsaEncryption OID).
- ECDSA: DER-encoded (X9.62, as RFC 7427 carries it) by default; `ecdsa_der_to_raw` /
  `ecdsa_raw_to_der` convert to and from the fixed-width r||s of RFC 4754 (IKEv2 methods 9-11).
- Ed25519: the hash name is ignored (RFC 8420: "identity" hash, the whole data is signed).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ike.policy import Identity, IdType
from ike.proto import secretcache
from ike.proto.crypto import hash_algorithm

__all__ = [
    "AuthError",
    "PrivateKey",
    "PublicKey",
    "cert_identity_matches",
    "ecdsa_der_to_raw",
    "ecdsa_raw_to_der",
    "key_kind",
    "load_ca",
    "load_certificate",
    "load_private_key",
    "sign",
    "verify",
    "verify_chain",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class AuthError(Exception):
    """Authentication failed or a certificate/key cannot be used; the message says why."""


# --- loading --------------------------------------------------------------------------------------

# Parsed certificate, key and CA files, each kept with the file's signature (inode, size, mtime) and
# used again while the file is unchanged. Every negotiation with certificates needs them, and reading
# and parsing them each time (an RSA private key is checked on every load) cost more than the
# signature itself; a replaced file is read again at the next negotiation.
_FileSig = tuple[tuple[str, int, int, int], ...]
_LOADED: dict[tuple[str, str], tuple[_FileSig, object]] = {}
_LOADED_MAX = 256
secretcache.register(_LOADED.clear)  # it holds private keys
_T = TypeVar("_T")


def _signature(path: str) -> _FileSig | None:
    """What identifies the file's (or a directory's files') content; None if it cannot be read."""
    try:
        st = os.stat(path)
        sig = [(path, st.st_ino, st.st_size, st.st_mtime_ns)]
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    f = os.stat(full)
                    sig.append((name, f.st_ino, f.st_size, f.st_mtime_ns))
    except OSError:
        return None
    return tuple(sig)


def _cached(kind: str, path: str, load: Callable[[str], _T]) -> _T:
    sig = _signature(path)
    hit = _LOADED.get((kind, path))
    if sig is not None and hit is not None and hit[0] == sig:
        return cast(_T, hit[1])  # stored below by the same kind's loader
    value = load(path)  # raises AuthError with the reason; failures are not kept
    if sig is not None:
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.clear()
        _LOADED[(kind, path)] = (sig, value)
    return value


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AuthError(f"cannot read {what} file {path}: {e.strerror or e}") from None


def parse_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes (a CERT payload carries DER)."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise AuthError(f"not a valid X.509 certificate: {e}") from None


def load_certificate(path: str) -> x509.Certificate:
    return _cached("cert", path, _load_certificate)


def _load_certificate(path: str) -> x509.Certificate:
    try:
        return parse_certificate(_read(path, "certificate"))
    except AuthError as e:
        raise AuthError(f"{path}: {e}") from None


def load_private_key(path: str, password: bytes | None = None) -> PrivateKey:
    if password is not None:
        return _load_private_key(path, password)
    return _cached("key", path, _load_private_key)


def _load_private_key(path: str, password: bytes | None = None) -> PrivateKey:
    data = _read(path, "private key")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise AuthError(f"{path}: not a usable private key: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise AuthError(f"{path}: key type {type(key).__name__} is not supported (use RSA, ECDSA or Ed25519)")
    return key


def load_ca(path: str) -> list[x509.Certificate]:
    """CA certificates from a PEM bundle, a DER file, or a directory of such files."""
    return list(_cached("ca", path, _load_ca))  # a fresh list each time: callers may extend it


def _load_ca(path: str) -> tuple[x509.Certificate, ...]:
    if os.path.isdir(path):
        out: list[x509.Certificate] = []
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                out += _load_ca(full)
        if not out:
            raise AuthError(f"no CA certificates found in directory {path}")
        return tuple(out)
    data = _read(path, "CA certificate")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise AuthError(f"{path}: not a valid CA certificate file: {e}") from None
    return tuple(certs)


# --- chain verification ---------------------------------------------------------------------------


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number}"


def _check_dates(cert: x509.Certificate, now: float) -> None:
    t = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    if t < cert.not_valid_before_utc:
        raise AuthError(
            f"certificate {_describe(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
        )
    if t > cert.not_valid_after_utc:
        raise AuthError(f"certificate {_describe(cert)} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        # v1 self-signed roots have no extensions; accept them only as configured trust anchors.
        return cert.version is x509.Version.v1
    return bc.ca


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_chain(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    now: float,
) -> None:
    """Raise AuthError unless `cert` chains to one of `cas` (through `intermediates` if needed),
    with every link's signature valid, every certificate within its dates and every issuer a CA."""
    if not cas:
        raise AuthError("no CA certificate is configured to check the peer's certificate against")
    _check_dates(cert, now)
    current = cert
    pool = list(intermediates)
    for _depth in range(8):
        for ca in cas:
            if current == ca or (_issued_by(current, ca)):
                _check_dates(ca, now)
                if current != ca and not _is_ca(ca):
                    raise AuthError(f"trust anchor {_describe(ca)} is not a CA certificate")
                return
        nxt = next((c for c in pool if c != current and _issued_by(current, c)), None)
        if nxt is None:
            raise AuthError(
                f"certificate {_describe(current)} (issuer {current.issuer.rfc4514_string()}) does not chain "
                f"to a configured CA ({', '.join(_describe(c) for c in cas)}); check the CA file or send the "
                f"intermediate certificates"
            )
        if not _is_ca(nxt):
            raise AuthError(f"intermediate {_describe(nxt)} is not a CA certificate")
        _check_dates(nxt, now)
        pool.remove(nxt)
        current = nxt
    raise AuthError(f"certificate chain of {_describe(cert)} is too long")


# --- identities -----------------------------------------------------------------------------------


def _name_matches(identity_value: str, name: x509.Name) -> bool:
    from ike.proto.identity import dn_equal, parse_dn

    try:
        wanted = parse_dn(identity_value)
    except ValueError:
        return False
    return dn_equal(wanted, name)


def cert_identity_matches(identity: Identity, cert: x509.Certificate) -> bool:
    """Whether `cert` speaks for `identity`: its subject DN, or a subjectAltName of the same kind
    (IP address, DNS name, e-mail address). Comparison of names is case-insensitive."""
    if identity.type is IdType.DN:
        return _name_matches(identity.value, cert.subject)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    if identity.type in (IdType.IPV4, IdType.IPV6):
        try:
            addr = ipaddress.ip_address(identity.value)
        except ValueError:
            return False
        return addr in san.get_values_for_type(x509.IPAddress)
    if identity.type is IdType.FQDN:
        want = identity.value.lower().rstrip(".")
        return any(d.lower().rstrip(".") == want for d in san.get_values_for_type(x509.DNSName))
    if identity.type is IdType.USER_FQDN:
        want = identity.value.lower()
        return any(e.lower() == want for e in san.get_values_for_type(x509.RFC822Name))
    return False


# --- signatures -----------------------------------------------------------------------------------


def key_kind(key: PrivateKey | PublicKey) -> str:
    """ "rsa", "ecdsa" or "ed25519"."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    raise AuthError(f"key type {type(key).__name__} is not supported")


def _rsa_padding(hash_name: str, pss_salt: int | None) -> padding.AsymmetricPadding:
    if pss_salt is None:
        return padding.PKCS1v15()
    return padding.PSS(mgf=padding.MGF1(hash_algorithm(hash_name)), salt_length=pss_salt)


def sign(key: PrivateKey, data: bytes, hash_name: str, *, pss_salt: int | None = None) -> bytes:
    """RSA PKCS#1 v1.5 (RSASSA-PSS with MGF1(hash_name) and this salt length when `pss_salt` is
    given), ECDSA (DER signature) or Ed25519 (hash_name ignored)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _rsa_padding(hash_name, pss_salt), hash_algorithm(hash_name))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_algorithm(hash_name)))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise AuthError(f"key type {type(key).__name__} cannot sign")


def verify(
    public_key: PublicKey, signature: bytes, data: bytes, hash_name: str, *, pss_salt: int | None = None
) -> None:
    """Raise AuthError if `signature` over `data` does not verify (ECDSA: DER form; RSA: PKCS#1 v1.5,
    or RSASSA-PSS with MGF1(hash_name) and this salt length when `pss_salt` is given)."""
    what = f"{hash_name}, PSS" if pss_salt is not None else hash_name
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _rsa_padding(hash_name, pss_salt), hash_algorithm(hash_name))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hash_algorithm(hash_name)))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            raise AuthError(f"key type {type(public_key).__name__} cannot verify signatures")
    except InvalidSignature:
        raise AuthError(f"{key_kind(public_key)} signature ({what}) does not verify") from None
    except (ValueError, KeyError, UnsupportedAlgorithm) as e:
        raise AuthError(f"{key_kind(public_key)} signature cannot be checked: {e}") from None


def _curve_bytes(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def ecdsa_der_to_raw(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    """DER ECDSA-Sig-Value -> fixed-width r||s (RFC 4754)."""
    r, s = decode_dss_signature(signature)
    n = _curve_bytes(curve)
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def ecdsa_raw_to_der(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    n = _curve_bytes(curve)
    if len(signature) != 2 * n:
        raise AuthError(f"ECDSA {curve.name} signature is {len(signature)} bytes, expected {2 * n}")
    return encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
