"""A throw-away PKI made with `cryptography` for certificate tests: a CA, an optional intermediate
and host certificates for RSA, ECDSA (P-256/P-384/P-521) and Ed25519 keys, written to a directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
NOW_TS = NOW.timestamp()


def new_key(kind: str):  # type: ignore[no-untyped-def]
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ecdsa521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _name(cn: str, org: str = "Example") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(  # type: ignore[no-untyped-def]
    subject: x509.Name,
    key,
    issuer_name: x509.Name,
    issuer_key,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=30))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algo = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(issuer_key, algo)


@dataclass
class Host:
    cert: x509.Certificate
    key: object
    cert_file: str
    key_file: str


@dataclass
class Pki:
    ca_cert: x509.Certificate
    ca_key: object
    ca_file: str
    directory: Path

    def host(
        self,
        cn: str,
        kind: str,
        ip: str | None = None,
        dns: str | None = None,
        email: str | None = None,
        issuer: tuple[x509.Certificate, object] | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Host:
        key = new_key(kind)
        sans: list[x509.GeneralName] = []
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        if dns:
            sans.append(x509.DNSName(dns))
        if email:
            sans.append(x509.RFC822Name(email))
        icert, ikey = issuer or (self.ca_cert, self.ca_key)
        cert = make_cert(_name(cn), key, icert.subject, ikey, False, sans, not_after=not_after)
        cf = self.directory / f"{cn}-{kind}.crt"
        kf = self.directory / f"{cn}-{kind}.key"
        cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(
            key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Host(cert, key, str(cf), str(kf))

    def intermediate(self, cn: str = "Sub CA") -> tuple[x509.Certificate, object]:
        key = new_key("ecdsa")
        return make_cert(_name(cn), key, self.ca_cert.subject, self.ca_key, True), key


def make_pki(directory: Path, kind: str = "ecdsa", cn: str = "Test CA") -> Pki:
    key = new_key(kind)
    cert = make_cert(_name(cn), key, _name(cn), key, True)
    f = directory / f"ca-{cn.replace(' ', '_')}.crt"
    f.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(cert, key, str(f), directory)
