"""Phase 1 authentication (RFC 2409 §5.1-5.4, RFC 4754): what HASH_I/HASH_R are, how they are
proven (a HASH payload for pre-shared keys, a SIG payload for RSA/ECDSA) and checked.

RSA signs HASH_I itself with PKCS#1 v1.5 and no DigestInfo (as RFC 2409 implementations do). ECDSA
(methods 9/10/11) also signs HASH_I itself: HASH_I, the output of the negotiated hash, is the
digest ECDSA signs (RFC 4754 expects that hash to be the curve's: SHA-256 for P-256 ...), and the
signature is r||s. strongSwan does exactly this (its "ECDSA_WITH_NULL" scheme for IKEv1).
Certificates, chains and identity-in-certificate checks are the shared `ike.proto.certs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed

from ike.policy import AuthMethod, Identity, Phase1Tunnel
from ike.proto.crypto import hash_algorithm, prf
from ike.proto.v1.proposals import AUTH_ECDSA, AUTH_RSA_SIG


class AuthFailure(Exception):
    """Authentication could not be done or did not verify; the text says why."""


def hash_i(prf_name: str, skeyid: bytes, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes,
           idii_b: bytes) -> bytes:  # fmt: skip
    return prf(prf_name, skeyid, gxi + gxr + cky_i + cky_r + sai_b + idii_b)


def hash_r(prf_name: str, skeyid: bytes, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes,
           idir_b: bytes) -> bytes:  # fmt: skip
    return prf(prf_name, skeyid, gxr + gxi + cky_r + cky_i + sai_b + idir_b)


def _prehashed(digest: bytes) -> Prehashed:
    """HASH_I is already a digest: have ECDSA sign it as one (by its length)."""
    for name in ("sha1", "sha256", "sha384", "sha512", "md5"):
        alg = hash_algorithm(name)
        if alg.digest_size == len(digest):
            return Prehashed(alg)
    raise AuthFailure(f"a {len(digest)}-byte HASH cannot be signed with ECDSA")


def _ecdsa_method(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> int:
    return {256: 9, 384: 10, 521: 11}.get(key.curve.key_size, 9)


@dataclass
class LocalCredentials:
    """What we prove ourselves with, loaded once when the negotiation starts."""

    method: AuthMethod
    psk: bytes | None = None
    cert: x509.Certificate | None = None
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
    cas: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def load(cls, tunnel: Phase1Tunnel) -> LocalCredentials:
        """Raise AuthFailure naming the missing or unusable item."""
        method = tunnel.policy.auth
        cr = tunnel.credentials
        if method is AuthMethod.PSK:
            if not cr.psk:
                raise AuthFailure(f"tunnel {tunnel.name}: pre-shared key authentication but no key is configured")
            return cls(method, psk=cr.psk)
        if method is AuthMethod.ED25519:
            raise AuthFailure(f"tunnel {tunnel.name}: Ed25519 signatures are not defined for IKEv1; use rsa or ecdsa")
        if not (cr.cert_file and cr.key_file and cr.ca_file):
            raise AuthFailure(
                f"tunnel {tunnel.name}: {method.value} authentication needs a certificate, key and CA file"
            )
        try:
            from ike.proto import certs

            cert = certs.load_certificate(cr.cert_file)
            key = certs.load_private_key(cr.key_file)
            cas = certs.load_ca(cr.ca_file)
        except Exception as e:
            raise AuthFailure(f"tunnel {tunnel.name}: cannot load credentials: {e}") from None
        if method is AuthMethod.RSA and not isinstance(key, rsa.RSAPrivateKey):
            raise AuthFailure(f"tunnel {tunnel.name}: rsa authentication but {cr.key_file} is not an RSA key")
        if method is AuthMethod.ECDSA and not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthFailure(f"tunnel {tunnel.name}: ecdsa authentication but {cr.key_file} is not an ECDSA key")
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        return cls(method, cert=cert, key=key, cas=list(cas))

    def wire_method(self) -> int:
        if self.method is AuthMethod.PSK:
            return 1
        if self.method is AuthMethod.RSA:
            return AUTH_RSA_SIG
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        return _ecdsa_method(self.key)

    def cert_der(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sign(self, method: int, data: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), NoDigestInfo())
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

            der = self.key.sign(data, ec.ECDSA(_prehashed(data)))
            r, s = decode_dss_signature(der)
            n = (self.key.curve.key_size + 7) // 8
            return r.to_bytes(n, "big") + s.to_bytes(n, "big")
        raise AuthFailure("no private key to sign with")


def verify_peer_certificate(
    creds: LocalCredentials, cert_ders: list[bytes], peer_id: Identity, now: float
) -> x509.Certificate:
    """The peer's end-entity certificate once it chains to our CA and names `peer_id`."""
    from ike.proto import certs

    if not cert_ders:
        raise AuthFailure("the peer sent no certificate (signature authentication needs one)")
    try:
        parsed = [certs.parse_certificate(d) for d in cert_ders]
    except Exception as e:
        raise AuthFailure(f"peer certificate does not parse: {e}") from None
    ee = next((c for c in parsed if certs.cert_identity_matches(peer_id, c)), None)
    if ee is None:
        raise AuthFailure(f"no certificate from the peer names its identity {peer_id.value!r}")
    try:
        certs.verify_chain(ee, [c for c in parsed if c is not ee], creds.cas, now)
    except Exception as e:
        raise AuthFailure(f"peer certificate rejected: {e}") from None
    return ee


def verify_signature(cert: x509.Certificate, method: int, signature: bytes, data: bytes) -> None:
    pub = cert.public_key()
    try:
        if method == AUTH_RSA_SIG:
            if not isinstance(pub, rsa.RSAPublicKey):
                raise AuthFailure("RSA signature method but the peer's certificate has no RSA key")
            pub.verify(signature, data, padding.PKCS1v15(), NoDigestInfo())  # type: ignore[arg-type]
            return
        if method in AUTH_ECDSA:
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise AuthFailure("ECDSA signature method but the peer's certificate has no EC key")
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            n = (pub.curve.key_size + 7) // 8
            if len(signature) != 2 * n:
                raise AuthFailure(f"ECDSA signature is {len(signature)} bytes, expected {2 * n}")
            der = encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
            pub.verify(der, data, ec.ECDSA(_prehashed(data)))
            return
    except InvalidSignature:
        raise AuthFailure("the peer's signature does not verify") from None
    except ValueError as e:
        raise AuthFailure(f"the peer's signature cannot be checked: {e}") from None
    raise AuthFailure(f"authentication method {method} is not a signature method")
