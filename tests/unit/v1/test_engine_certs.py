"""Signature authentication (RFC 2409 RSA signatures, RFC 4754 ECDSA) with certificates made here."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers import isakmp as S

from ike.policy import AuthMethod, Credentials, Identity
from ike.proto.api import IkeSaEstablished, NegotiationFailed

from .pair import A_IP, B_IP, Pair, mirror, phase1, phase2, policies_b
from .pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _tunnels(pki: Pki, kind: str, mode: str, id_kind: str, other_ca: Pki | None = None):  # type: ignore[no-untyped-def]
    auth = AuthMethod.RSA if kind == "rsa" else AuthMethod.ECDSA
    ha = pki.host("a.example.org", kind, A_IP)
    hb = (other_ca or pki).host("b.example.org", kind, B_IP)
    if id_kind == "dn":
        ida, idb = Identity.parse(ha.dn), Identity.parse(hb.dn)
    elif id_kind == "fqdn":
        ida, idb = Identity.parse("a.example.org"), Identity.parse("b.example.org")
    else:
        ida, idb = Identity.parse(A_IP), Identity.parse(B_IP)
    ca = Credentials(cert_file=ha.cert_file, key_file=ha.key_file, ca_file=pki.ca_file)
    cb = Credentials(cert_file=hb.cert_file, key_file=hb.key_file, ca_file=pki.ca_file)
    a1 = phase1(A_IP, B_IP, mode=mode, auth=auth, creds=ca, local_id=ida, remote_id=idb)
    b1 = phase1(B_IP, A_IP, mode=mode, auth=auth, creds=cb, local_id=idb, remote_id=ida)
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", pfs=19)
    return a1, a2, b1, mirror(a2, b1), ida, idb


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ecdsa384", "ecdsa521"])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("id_kind", ["dn", "fqdn", "ip"])
def test_signatures(pki: Pki, kind: str, mode: str, id_kind: str) -> None:
    a1, a2, b1, b2, ida, idb = _tunnels(pki, kind, mode, id_kind)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    ea, eb = p.established()
    assert len(ea) == 1 and len(eb) == 1, (p.events("a", NegotiationFailed), p.events("b", NegotiationFailed))
    assert isinstance(ea[0], IkeSaEstablished) and ea[0].remote_id.type is idb.type and eb[0].remote_id.type is ida.type
    ca, cb = p.children()
    assert ca and cb and ca[0].inbound == cb[0].outbound


@pytest.mark.parametrize(("kind", "method"), [("rsa", 3), ("ecdsa", 9), ("ecdsa384", 10), ("ecdsa521", 11)])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_signature_method_on_the_wire(pki: Pki, kind: str, method: int, mode: str) -> None:
    """The authentication method offered is the one for the key: RSA 3, ECDSA by curve (RFC 4754:
    P-256 9, P-384 10, P-521 11), read from the first message by scapy's ISAKMP layer."""
    a1, a2, b1, b2, _, _ = _tunnels(pki, kind, mode, "fqdn")
    p = Pair(a1, [a2], policies_b(b1, b2))
    first = p.log[0][1].data
    p.run()
    assert len(p.established()[0]) == 1 and len(p.established()[1]) == 1
    attrs = dict(S.ISAKMP(first)[S.ISAKMP_payload_SA].prop.trans.transforms)
    assert attrs["Authentication"] == ("RSA Sig" if method == 3 else method)


def test_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    rogue = Pki(tmp_path)
    a1, a2, b1, b2, _, _ = _tunnels(pki, "ecdsa", "main", "fqdn", other_ca=rogue)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 60)
    fa = p.events("a", NegotiationFailed)
    assert fa and "does not chain" in fa[0].reason and fa[0].notify == "AUTHENTICATION_FAILED"
    assert not p.established()[0]


def test_certificate_not_naming_the_identity_is_refused(pki: Pki) -> None:
    a1, a2, b1, b2, _, _ = _tunnels(pki, "rsa", "main", "fqdn")
    from dataclasses import replace

    a1 = replace(a1, remote_id=Identity.parse("c.example.org"))
    b1 = replace(b1, local_id=Identity.parse("c.example.org"))
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run(until=p.now + 60)
    fa = p.events("a", NegotiationFailed)
    assert fa and "c.example.org" in fa[0].reason


def test_missing_certificate_files_fail_clearly(pki: Pki) -> None:
    a1 = phase1(
        A_IP, B_IP, auth=AuthMethod.RSA, creds=Credentials(cert_file="/nonexistent.pem", key_file="/x", ca_file="/y")
    )
    p = Pair(a1, [], policies_b(a1))
    f = p.events("a", NegotiationFailed)
    assert f and "cannot load credentials" in f[0].reason and p.sent == 0
