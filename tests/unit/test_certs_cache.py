"""Certificate, key and CA files are parsed once and used again while unchanged; a replaced file is
read again at the next use, and a broken one is never kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ike import certgen
from ike.proto import certs


def _files(tmp_path: Path) -> tuple[Path, Path, Path, certgen.Issued]:
    ca = certgen.make_ca("CN=cache test CA", "ecdsa")
    host = certgen.make_host(ca, "gw.example.net", key_type="ecdsa")
    paths = tmp_path / "ca.pem", tmp_path / "gw.pem", tmp_path / "gw.key"
    paths[0].write_bytes(certgen.cert_pem(ca.cert))
    paths[1].write_bytes(certgen.cert_pem(host.cert))
    paths[2].write_bytes(certgen.key_pem(host.key))
    return *paths, ca


def test_unchanged_files_are_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_file, cert_file, key_file, _ca = _files(tmp_path)
    reads: list[str] = []
    real = certs._read
    monkeypatch.setattr(certs, "_read", lambda p, what: reads.append(p) or real(p, what))
    first = certs.load_certificate(str(cert_file)), certs.load_private_key(str(key_file)), certs.load_ca(str(ca_file))
    again = certs.load_certificate(str(cert_file)), certs.load_private_key(str(key_file)), certs.load_ca(str(ca_file))
    assert reads == [str(cert_file), str(key_file), str(ca_file)]
    assert again[0] is first[0] and again[1] is first[1] and again[2] == first[2]
    assert again[2] is not first[2]  # a fresh list: a caller extending it changes nothing here


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    ca_file, cert_file, _key_file, ca = _files(tmp_path)
    old = certs.load_certificate(str(cert_file))
    renewed = certgen.make_host(ca, "gw2.example.net", key_type="ecdsa")
    tmp = tmp_path / "new.pem"
    tmp.write_bytes(certgen.cert_pem(renewed.cert))
    os.replace(tmp, cert_file)  # as an operator (or certbot) replaces a certificate
    new = certs.load_certificate(str(cert_file))
    assert new.serial_number == renewed.cert.serial_number != old.serial_number
    # A CA directory: a file added to it is seen.
    d = tmp_path / "cas"
    d.mkdir()
    (d / "a.pem").write_bytes(ca_file.read_bytes())
    assert len(certs.load_ca(str(d))) == 1
    (d / "b.pem").write_bytes(certgen.cert_pem(certgen.make_ca("CN=second CA", "ecdsa").cert))
    assert len(certs.load_ca(str(d))) == 2


def test_a_broken_file_is_not_kept(tmp_path: Path) -> None:
    _ca_file, cert_file, _key_file, _ca = _files(tmp_path)
    good = cert_file.read_bytes()
    cert_file.write_bytes(b"not a certificate")
    with pytest.raises(certs.AuthError, match=r"not a valid X\.509"):
        certs.load_certificate(str(cert_file))
    cert_file.write_bytes(good)
    assert certs.load_certificate(str(cert_file)).subject
    missing = tmp_path / "missing.pem"
    with pytest.raises(certs.AuthError, match="cannot read"):
        certs.load_certificate(str(missing))
