"""certgen: a CA and host certificates that chain to it, with the SANs and subjects asked for."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from ike import certgen


def verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    pub = ca.public_key()
    assert cert.issuer == ca.subject
    if isinstance(pub, rsa.RSAPublicKey):
        assert cert.signature_hash_algorithm is not None
        pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey) and cert.signature_hash_algorithm is not None
        pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_host_certificate_chains_and_carries_sans(kind: str) -> None:
    ca = certgen.make_ca("CN=Test CA,O=ike", kind)
    host = certgen.make_host(ca, "gw.example", ["198.18.0.1", "2001:db8::1", "alice@example.org", "alt.example"], kind)
    verify_signed_by(host.cert, ca.cert)
    assert host.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw.example"
    san = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example", "alt.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("198.18.0.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.org"]
    assert host.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    pub = host.cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey if kind == "rsa" else ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == host.key.public_key().public_numbers()


def test_dn_subject() -> None:
    ca = certgen.make_ca("Plain CA")
    host = certgen.make_host(ca, "CN=gw-a,O=ike example", ["198.18.0.1"])
    assert host.cert.subject.rfc4514_string() == "CN=gw-a,O=ike example"
    san = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    verify_signed_by(host.cert, ca.cert)


def test_bad_san_is_refused() -> None:
    ca = certgen.make_ca("CA")
    with pytest.raises(ValueError, match="not an IP address"):
        certgen.make_host(ca, "gw", ["not a name!"])


def test_command_line_writes_files_and_reuses_the_ca(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    args = [sys.executable, "-m", "ike.certgen", "--out", str(out), "--ca", "CN=cli CA"]
    r = subprocess.run([*args, "--host", "CN=gw-a,O=ike example,2001:db8::a"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ca_pem = (out / "ca.pem").read_bytes()
    r = subprocess.run([*args, "--key", "ecdsa", "--host", "gw-b.example,198.18.0.2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "ca.pem").read_bytes() == ca_pem  # reused, so both hosts chain to one CA
    ca = x509.load_pem_x509_certificate(ca_pem)
    a = x509.load_pem_x509_certificate((out / "gw-a.pem").read_bytes())
    b = x509.load_pem_x509_certificate((out / "gw-b.example.pem").read_bytes())
    verify_signed_by(a, ca)
    verify_signed_by(b, ca)
    assert a.subject.rfc4514_string() == "CN=gw-a,O=ike example"
    for key in ("ca.key", "gw-a.key", "gw-b.example.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    r = subprocess.run([*args, "--host", "gw,bad name"], capture_output=True, text=True)
    assert r.returncode == 1 and "certgen:" in r.stderr
