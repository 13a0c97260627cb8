"""CERTREQ (RFC 7296 §3.7) names each configured CA by the SHA-1 of its SubjectPublicKeyInfo, and
CERT goes to a peer that asked for it (strongSwan's send_cert = ifasked) or, configured, always."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ike.proto.api import IkeSaEstablished, NegotiationFailed
from ike.proto.v2.payloads import CertPayload, CertReqPayload
from ike.proto.v2.payloads.header import IKE_AUTH, IKE_SA_INIT

from .certs_fixture import Pki, make_pki
from .harness import Net
from .test_engine_certs import cert_pair, settings
from .wire import KeyLog, messages, remember_keys


def keyid(cert: x509.Certificate) -> bytes:
    """RFC 7296 §3.7: SHA-1 of the CA's public key as a DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()


def test_certreq_names_the_configured_cas(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pki = make_pki(tmp_path / "a", kind="rsa")
    other = make_pki(tmp_path / "b", cn="Other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        pki.ca_cert.public_bytes(Encoding.PEM) + other.ca_cert.public_bytes(Encoding.PEM)
    )  # the responder trusts two CAs; the initiator one
    net = cert_pair(pki, "ecdsa", "i.example", "r.example", r_ca=str(bundle))
    net.pump()
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished)
    keys = remember_keys(net)
    by = {(side, ex, resp): payloads for side, ex, resp, payloads in messages(net, keys)}
    (r_req,) = [p for p in by[("r", IKE_SA_INIT, True)] if isinstance(p, CertReqPayload)]
    assert r_req.encoding == 4  # X.509 Certificate - Signature
    assert r_req.data == keyid(pki.ca_cert) + keyid(other.ca_cert)
    assert r_req.authorities() == [keyid(pki.ca_cert), keyid(other.ca_cert)]
    (i_req,) = [p for p in by[("i", IKE_AUTH, False)] if isinstance(p, CertReqPayload)]
    assert (i_req.encoding, i_req.data) == (4, keyid(pki.ca_cert))
    assert not [p for p in by[("i", IKE_SA_INIT, False)] if isinstance(p, CertReqPayload)]
    # Both asked, so both sent their certificate.
    for side, resp in (("i", False), ("r", True)):
        assert len([p for p in by[(side, IKE_AUTH, resp)] if isinstance(p, CertPayload)]) == 1


def _certs_sent(net: Net, log: KeyLog, side: str) -> int:
    return sum(isinstance(p, CertPayload) for s, _, _, ps in messages(net, log.keys, IKE_AUTH) if s == side for p in ps)


def test_cert_only_to_a_peer_that_asked(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    # The initiator sends no CERTREQ: the responder (ifasked) leaves its certificate out, and the
    # initiator, which has no copy of it, cannot authenticate the responder.
    quiet = settings(send_certreq=False)
    log = KeyLog()
    net = log.net = cert_pair(pki, "ecdsa", "i.example", "r.example", i_settings=quiet, drop=log)
    net.pump()
    assert _certs_sent(net, log, "r") == 0 and _certs_sent(net, log, "i") == 1  # the responder did ask
    f = net.i.of(NegotiationFailed)
    assert f and "sent no X.509 certificate" in f[0].reason and f[0].notify == "AUTHENTICATION_FAILED"
    assert not net.i.of(IkeSaEstablished)
    # Configured to send it always, the responder includes it unasked and both ends are up.
    log = KeyLog()
    always = settings(send_cert="always")
    net = log.net = cert_pair(pki, "ecdsa", "i.example", "r.example", i_settings=quiet, r_settings=always, drop=log)
    net.pump()
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished), (net.i.events, net.r.events)
    assert _certs_sent(net, log, "r") == 1
