"""ike.proto.certs and ike.proto.identity against a PKI generated in the test."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ike.policy import Identity, IdType
from ike.proto import certs
from ike.proto.identity import IdentityError, identities_match, identity_from_wire, identity_to_wire

from .certs_fixture import NOW, NOW_TS, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ecdsa384", "ed25519"])
def test_load_sign_verify_chain(pki, kind: str) -> None:  # type: ignore[no-untyped-def]
    h = pki.host(f"gw-{kind}", kind, ip="198.18.0.1", dns="gw.example", email="gw@example")
    cert = certs.load_certificate(h.cert_file)
    key = certs.load_private_key(h.key_file)
    cas = certs.load_ca(pki.ca_file)
    certs.verify_chain(cert, [], cas, NOW_TS)
    sig = certs.sign(key, b"data", "sha256")
    certs.verify(cert.public_key(), sig, b"data", "sha256")
    with pytest.raises(certs.AuthError, match="does not verify"):
        certs.verify(cert.public_key(), sig, b"datb", "sha256")
    assert certs.key_kind(key) == kind.rstrip("384")
    for ident in (
        Identity(IdType.IPV4, "198.18.0.1"),
        Identity(IdType.FQDN, "GW.example"),
        Identity(IdType.USER_FQDN, "gw@example"),
        Identity(IdType.DN, f"CN=gw-{kind},O=Example,C=US"),
        Identity(IdType.DN, f"C=US, O=Example, CN=gw-{kind}"),
    ):
        assert certs.cert_identity_matches(ident, cert), ident
    assert not certs.cert_identity_matches(Identity(IdType.IPV4, "198.18.0.2"), cert)
    assert not certs.cert_identity_matches(Identity(IdType.DN, "CN=other,O=Example,C=US"), cert)


def test_chain_failures(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = make_pki(tmp_path, cn="Other CA")
    h = other.host("stranger", "ecdsa")
    with pytest.raises(certs.AuthError, match="does not chain"):
        certs.verify_chain(h.cert, [], [pki.ca_cert], NOW_TS)
    expired = pki.host("old", "ecdsa", not_after=NOW - datetime.timedelta(days=1))
    with pytest.raises(certs.AuthError, match="expired"):
        certs.verify_chain(expired.cert, [], [pki.ca_cert], NOW_TS)
    with pytest.raises(certs.AuthError, match="no CA"):
        certs.verify_chain(h.cert, [], [], NOW_TS)


def test_intermediate(pki) -> None:  # type: ignore[no-untyped-def]
    sub = pki.intermediate()
    h = pki.host("leaf", "rsa", issuer=sub)
    with pytest.raises(certs.AuthError):
        certs.verify_chain(h.cert, [], [pki.ca_cert], NOW_TS)
    certs.verify_chain(h.cert, [sub[0]], [pki.ca_cert], NOW_TS)


def test_ecdsa_raw_roundtrip(pki) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP384R1())
    der = certs.sign(key, b"x", "sha384")
    raw = certs.ecdsa_der_to_raw(der, key.curve)
    assert len(raw) == 96
    certs.verify(key.public_key(), certs.ecdsa_raw_to_der(raw, key.curve), b"x", "sha384")
    with pytest.raises(certs.AuthError):
        certs.ecdsa_raw_to_der(raw[:-1], key.curve)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(certs.AuthError, match="cannot read"):
        certs.load_certificate(str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    with pytest.raises(certs.AuthError, match="not a valid"):
        certs.load_certificate(str(bad))


@pytest.mark.parametrize(
    "ident",
    [
        Identity(IdType.IPV4, "198.18.0.1"),
        Identity(IdType.IPV6, "2001:db8::1"),
        Identity(IdType.FQDN, "gw.example"),
        Identity(IdType.USER_FQDN, "me@example"),
        Identity(IdType.DN, "CN=gw1+UID=7,OU=Net,O=Example \\, Inc,C=US"),
        Identity(IdType.KEY_ID, "0x00ff"),
    ],
)
def test_identity_roundtrip(ident: Identity) -> None:
    t, data = identity_to_wire(ident)
    assert t == ident.type.value
    back = identity_from_wire(t, data)
    assert identities_match(ident, back)


def test_identity_wire_errors() -> None:
    with pytest.raises(IdentityError, match="expected 4"):
        identity_from_wire(1, b"\1\2\3")
    with pytest.raises(IdentityError, match="not supported"):
        identity_from_wire(4, b"x")
    with pytest.raises(IdentityError, match="DER"):
        identity_from_wire(9, b"\x30\x05\x31")
    # DN bytes produced by cryptography decode to the same name
    t, data = identity_to_wire(Identity(IdType.DN, "CN=a,O=b"))
    assert identity_from_wire(t, data).value == "CN=a,O=b"
