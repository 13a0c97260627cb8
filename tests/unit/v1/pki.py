"""A throw-away PKI for the IKEv1 signature tests: one CA, host certificates with RSA or ECDSA keys,
written to a directory as PEM files (what the tunnel definitions point at)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)


def _key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ecdsa521":
        return ec.generate_private_key(ec.SECP521R1())
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


@dataclass
class HostCert:
    dn: str
    cert_file: str
    key_file: str


class Pki:
    def __init__(self, where: Path) -> None:
        self.dir = where
        self.ca_key = _key("ecdsa")
        self.ca_name = _name("Test CA")
        self.ca = self._issue(self.ca_name, self.ca_key, ca=True)
        self.ca_file = str(where / "ca.pem")
        Path(self.ca_file).write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def _issue(self, subject: x509.Name, key: object, ca: bool, sans: list[x509.GeneralName] | None = None,
               signer: object | None = None) -> x509.Certificate:  # fmt: skip
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_name)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(signer or key, hashes.SHA256())  # type: ignore[arg-type]

    def host(self, name: str, kind: str, ip: str | None = None) -> HostCert:
        key = _key(kind)
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        subject = _name(name)
        cert = self._issue(subject, key, ca=False, sans=sans, signer=self.ca_key)
        cf, kf = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return HostCert(subject.rfc4514_string(), str(cf), str(kf))
