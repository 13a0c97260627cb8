"""Make a small PKI with `cryptography`: a CA, and host certificates signed by it, for the examples,
the tests and the demo. No external CA, no openssl.

    python -m ike.certgen --out DIR --ca NAME --host NAME[,SAN...] [--host ...] [--key rsa|ecdsa]

Each `--host` gives the certificate's name and optional subjectAltNames: an IP address becomes an
IP SAN, `user@host` an email (RFC 822) SAN, `CN=...,O=...` the certificate's subject DN, anything else
a DNS SAN. The name itself is the subject CN (and a SAN of its own kind unless it is a DN).
Writes DIR/ca.pem, DIR/ca.key, DIR/NAME.pem and DIR/NAME.key (keys mode 0600). An existing CA in
DIR is reused, so hosts can be added later.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# RFC 4945 §5.1.3.12: IKE peers may require serverAuth/clientAuth or the IKE intermediate EKU.
IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")


def new_key(kind: str = "rsa") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {kind!r}: use rsa or ecdsa")


def parse_dn(text: str) -> x509.Name:
    """An RFC 4514 string ("CN=gw1,O=Example,C=US") as an x509.Name."""
    return x509.Name.from_rfc4514_string(text)


def _name(text: str) -> x509.Name:
    return parse_dn(text) if "=" in text else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def san_entry(text: str) -> x509.GeneralName | None:
    """IP, email, DN (None: a DN is the subject, not a SAN here) or DNS, by its form."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "=" in text:
        return None
    if "@" in text:
        return x509.RFC822Name(text)
    if not re.fullmatch(r"[A-Za-z0-9.*-]+", text):
        raise ValueError(f"{text!r} is not an IP address, user@host, CN=... DN or DNS name")
    return x509.DNSName(text)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey


def _builder(subject: x509.Name, issuer: x509.Name, pub: object, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_ca(name: str, key_type: str = "rsa", days: int = 3650) -> Issued:
    key = new_key(key_type)
    subject = _name(name)
    cert = (
        _builder(subject, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_host(
    ca: Issued, name: str, sans: list[str] | tuple[str, ...] = (), key_type: str = "rsa", days: int = 825
) -> Issued:
    """A host/user certificate signed by `ca`. `name` is the subject (a CN, or a DN if it has '=');
    `sans` (and `name` itself unless it is a DN) become subjectAltNames by their form."""
    key = new_key(key_type)
    subject = _name(name)
    seen: list[x509.GeneralName] = []
    for text in ([name] if "=" not in name else []) + list(sans):
        entry = san_entry(text)
        if entry is None:
            subject = parse_dn(text)  # a DN among the SANs names the subject
        elif entry not in seen:
            seen.append(entry)
    b = (
        _builder(subject, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, IKE_INTERMEDIATE]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if seen:
        b = b.add_extension(x509.SubjectAlternativeName(seen), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_issued(out: Path, stem: str, issued: Issued) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    _write(cert_path, cert_pem(issued.cert), 0o644)
    _write(key_path, key_pem(issued.key), 0o600)
    return cert_path, key_path


def load_ca(out: Path) -> Issued | None:
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if not (cert_path.exists() and key_path.exists()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an RSA or ECDSA key")
    return Issued(cert, key)


def stem_of(name: str) -> str:
    """A file name for a subject: the CN of a DN, else the name; unsafe characters replaced."""
    if "=" in name:
        cns = parse_dn(name).get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else name
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ike.certgen", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", required=True, type=Path, help="directory for the PEM files")
    p.add_argument(
        "--ca", default="ike test CA", help="CA subject (a CN, or a DN with '='); reused if DIR/ca.pem exists"
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME[,SAN...]",
        help="a host certificate: its name and subjectAltNames (IP, DNS, user@host, or a CN=... DN)",
    )
    p.add_argument("--key", choices=("rsa", "ecdsa"), default="rsa", help="key type (default rsa)")
    p.add_argument("--days", type=int, default=825, help="host certificate validity (default 825)")
    args = p.parse_args(argv)
    try:
        ca = load_ca(args.out)
        if ca is None:
            ca = make_ca(args.ca, args.key)
            write_issued(args.out, "ca", ca)
            print(f"wrote {args.out / 'ca.pem'} ({args.ca})")
        for spec in args.host:
            # A DN contains commas itself: keep "CN=a,O=b" together, split only before SANs of other forms.
            parts = _split_host(spec)
            issued = make_host(ca, parts[0], parts[1:], args.key, args.days)
            cert_path, _ = write_issued(args.out, stem_of(parts[0]), issued)
            print(f"wrote {cert_path} ({issued.cert.subject.rfc4514_string()})")
    except (ValueError, OSError) as e:
        print(f"certgen: {e}", file=sys.stderr)
        return 1
    return 0


def _split_host(spec: str) -> list[str]:
    out: list[str] = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            raise ValueError(f"--host {spec!r}: empty element")
        # "O=Example" after "CN=gw" belongs to the same DN.
        if out and "=" in piece and "=" in out[-1] and "@" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


if __name__ == "__main__":
    sys.exit(main())
