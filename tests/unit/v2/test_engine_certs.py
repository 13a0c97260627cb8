"""IKE_AUTH with certificates: RSA, ECDSA and Ed25519, RFC 7427 and the classic methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ike.policy import AuthMethod, Credentials, Identity, Phase2Tunnel
from ike.proto.api import ChildSaEstablished, EngineSettings, IkeSaEstablished, NegotiationFailed
from ike.proto.identity import identities_match
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard
from ike.proto.v2.payloads import auth as am

from . import lifecycle
from .certs_fixture import NOW_TS, Pki, make_pki
from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2
from .lifecycle import Drop

AUTH = {
    "rsa": AuthMethod.RSA,
    "ecdsa": AuthMethod.ECDSA,
    "ecdsa384": AuthMethod.ECDSA,
    "ecdsa521": AuthMethod.ECDSA,
    "ed25519": AuthMethod.ED25519,
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("v2pki"))


def settings(classic: bool = False, pss: bool = False, **extra: object) -> EngineSettings:
    extra = {"wall_clock": lambda: NOW_TS, "ikev2_cookie_guard": CookieGuard(), **extra}
    if classic:
        extra["signature_hash_notify"] = False
    if pss:
        extra["rsa_pss"] = True
    return EngineSettings(extra=extra)


def cert_pair(
    pki: Pki,
    kind: str,
    i_id: str,
    r_id: str,
    classic: bool = False,
    r_kind: str | None = None,
    r_ca: str | None = None,
    i_id_cert: dict | None = None,  # type: ignore[type-arg]
    *,
    pss: bool = False,
    p1_kw: dict[str, Any] | None = None,
    p2s: list[Phase2Tunnel] | None = None,
    drop: Drop | None = None,
    san_ips: tuple[str, str] = (I_IP, R_IP),
    addresses: tuple[str, str] = (I_IP, R_IP),
    i_settings: EngineSettings | None = None,
    r_settings: EngineSettings | None = None,
) -> Net:
    """Initiator `kind`, responder `r_kind` certificates from `pki` (subjectAltNames: IP `san_ips`,
    DNS and RFC822); the responder mirrors the initiator's definition."""
    r_kind = r_kind or kind
    hi = pki.host(f"i-{kind}", kind, ip=san_ips[0], dns="i.example", email="i@example", **(i_id_cert or {}))
    hr = pki.host(f"r-{r_kind}", r_kind, ip=san_ips[1], dns="r.example", email="r@example")
    p1 = phase1(
        local_id=i_id,
        remote_id=r_id,
        local_addr=addresses[0],
        remote_addr=addresses[1],
        auth=AUTH[kind],
        psk=None,
        cert_file=hi.cert_file,
        key_file=hi.key_file,
        ca_file=pki.ca_file,
        **(p1_kw or {}),
    )
    r1 = mirror1(
        p1,
        policy=phase1(auth=AUTH[r_kind], **(p1_kw or {})).policy,
        credentials=Credentials(cert_file=hr.cert_file, key_file=hr.key_file, ca_file=r_ca or pki.ca_file),
    )
    children = p2s if p2s is not None else [phase2()]
    s = settings(classic, pss)
    return Net(
        p1,
        children,
        StaticPolicies([p1], children),
        StaticPolicies([r1], [mirror2(c) for c in children]),
        settings=i_settings or s,
        r_settings=r_settings or s,
        drop=drop,
        addresses=addresses,
    )


# Ed25519 exists only as an RFC 7427 signature (RFC 8420), so it has no classic variant.
KINDS = [
    ("rsa", False),
    ("rsa", True),
    ("ecdsa", False),
    ("ecdsa", True),
    ("ecdsa384", False),
    ("ecdsa384", True),
    ("ecdsa521", False),
    ("ecdsa521", True),
    ("ed25519", False),
]


@pytest.mark.parametrize(("kind", "classic"), KINDS, ids=[f"{k}-{'classic' if c else 'rfc7427'}" for k, c in KINDS])
@pytest.mark.parametrize(
    "ids",
    [
        ("198.18.0.1", "198.18.0.2"),
        ("i.example", "r.example"),
        ("i@example", "r@example"),
        ("CN=i-{k},O=Example,C=US", "C=US, O=Example, CN=r-{k}"),
    ],
    ids=["ipv4", "fqdn", "rfc822", "dn"],
)
def test_certificate_auth(pki: Pki, kind: str, classic: bool, ids: tuple[str, str]) -> None:
    i_id, r_id = (x.format(k=kind) for x in ids)
    net = cert_pair(pki, kind, i_id, r_id, classic)
    net.pump()
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished), (net.i.events, net.r.events)
    assert net.i.of(ChildSaEstablished) and net.r.of(ChildSaEstablished)
    assert identities_match(Identity.parse(i_id), net.r.of(IkeSaEstablished)[0].remote_id)
    assert identities_match(Identity.parse(r_id), net.i.of(IkeSaEstablished)[0].remote_id)


def test_classic_methods_used_without_signature_hash_notify(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from ike.proto.v2 import auth as a

    seen: list[int] = []
    orig = a.sign_auth

    def spy(key, octets, peer_hashes, pss=False):  # type: ignore[no-untyped-def]
        m, d = orig(key, octets, peer_hashes, pss)
        seen.append(m)
        return m, d

    monkeypatch.setattr(a, "sign_auth", spy)
    net = cert_pair(pki, "ecdsa384", "i.example", "r.example", classic=True)
    net.pump()
    assert net.i.of(IkeSaEstablished)
    assert seen == [am.ECDSA_384, am.ECDSA_384]
    seen.clear()
    net = cert_pair(pki, "rsa", "i.example", "r.example", classic=False)
    net.pump()
    assert seen == [am.DIGITAL_SIGNATURE, am.DIGITAL_SIGNATURE]


def test_untrusted_ca_fails(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path, cn="Other CA")
    net = cert_pair(pki, "ecdsa", "i.example", "r.example", r_ca=other.ca_file)
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "does not chain" in f[0].reason and f[0].notify == "AUTHENTICATION_FAILED"
    assert net.i.of(NegotiationFailed)[0].notify == "AUTHENTICATION_FAILED"


def test_identity_not_in_certificate_fails(pki: Pki) -> None:
    net = cert_pair(pki, "rsa", "x.example", "r.example")
    old = net.r_policies.phase1s[0]
    new = mirror1(
        net.i.engine.phase1,  # type: ignore[arg-type]
        policy=phase1(auth=AuthMethod.RSA).policy,
        credentials=old.credentials,
    )
    net.r_policies.replace(old, new)
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "does not contain its identity" in f[0].reason


def test_method_mismatch_fails(pki: Pki) -> None:
    net = cert_pair(pki, "rsa", "i.example", "r.example", r_kind="ecdsa")
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "rsa" in f[0].reason.lower()


def test_psk_against_certificate_definition_fails(pki: Pki) -> None:
    hr = pki.host("r-rsa", "rsa", dns="r.example")
    p1 = phase1(local_id="i.example", remote_id="r.example")
    r1 = mirror1(
        p1,
        policy=phase1(auth=AuthMethod.RSA).policy,
        credentials=Credentials(cert_file=hr.cert_file, key_file=hr.key_file, ca_file=pki.ca_file),
    )
    p2 = phase2()
    s = settings()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([r1], [mirror2(p2)]), settings=s, r_settings=s)
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "pre-shared key" in f[0].reason and "requires rsa" in f[0].reason


def test_missing_key_file_reported(pki: Pki) -> None:
    p1 = phase1(
        local_id="i.example",
        remote_id="r.example",
        auth=AuthMethod.RSA,
        psk=None,
        cert_file="/nonexistent/cert.pem",
        key_file="/nonexistent/key.pem",
        ca_file=pki.ca_file,
    )
    p2 = phase2()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]), settings=settings())
    net.pump()
    f = net.i.of(NegotiationFailed)
    assert f and "cannot read" in f[0].reason


# --- the SA's life after IKE_AUTH, for each kind of certificate (the PSK runs are in test_engine_pairs) --

CERT_KINDS = {
    "rsa": ("rsa", False),
    "rsa-pss": ("rsa", True),
    "ecdsa-p256": ("ecdsa", False),
    "ecdsa-p384": ("ecdsa384", False),
    "ecdsa-p521": ("ecdsa521", False),
    "ed25519": ("ed25519", False),
}


def cert_net(pki: Pki, cert: str) -> lifecycle.MakeNet:
    kind, pss = CERT_KINDS[cert]

    def make(
        *, p1: dict[str, Any] | None = None, p2s: list[dict[str, Any]] | None = None, drop: Drop | None = None
    ) -> Net:
        children = [phase2(**kw) for kw in (p2s or [{}])]
        return cert_pair(pki, kind, "i.example", "r.example", pss=pss, p1_kw=p1, p2s=children, drop=drop)

    return make


@pytest.mark.parametrize("scenario", list(lifecycle.SCENARIOS))
@pytest.mark.parametrize("cert", list(CERT_KINDS))
def test_certificate_sa_lifecycle(pki: Pki, cert: str, scenario: str) -> None:
    lifecycle.SCENARIOS[scenario](cert_net(pki, cert))
