"""RSASSA-PSS AUTH (RFC 7427, RFC 8247 SHOULD): verified from peers (strongSwan's `rsa/pss-sha256`),
sent when configured (`EngineSettings.extra["rsa_pss"]`) or when the peer signed with it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ike.policy import AuthMethod, Credentials
from ike.proto.api import EngineSettings, IkeSaEstablished, NegotiationFailed
from ike.proto.certs import AuthError
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard
from ike.proto.v2 import auth as a
from ike.proto.v2.payloads import auth as am

from .certs_fixture import NOW_TS, Pki, make_pki
from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2

# RFC 7427 appendix A.4.3: RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt 32 (what charon sends).
PSS_SHA256 = bytes.fromhex(
    "3041"
    "06092a864886f70d01010a"
    "3034"
    "a00f300d06096086480165030402010500"
    "a11c301a06092a864886f70d010108300d06096086480165030402010500"
    "a203020120"
)
# The same with the hash AlgorithmIdentifiers' NULL parameters left out (also valid DER).
PSS_SHA256_NO_NULL = bytes.fromhex(
    "303d"
    "06092a864886f70d01010a"
    "3030"
    "a00d300b0609608648016503040201"
    "a11a301806092a864886f70d010108300b0609608648016503040201"
    "a203020120"
)
OCTETS = b"signed octets of an IKE_AUTH exchange"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pss_auth(key: rsa.RSAPrivateKey, alg: bytes, salt: int = 32) -> bytes:
    pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)
    return bytes([len(alg)]) + alg + key.sign(OCTETS, pad, hashes.SHA256())


@pytest.mark.parametrize("alg", [PSS_SHA256, PSS_SHA256_NO_NULL], ids=["null-params", "absent-params"])
def test_peer_pss_signature_verifies(key: rsa.RSAPrivateKey, alg: bytes) -> None:
    data = _pss_auth(key, alg)
    a.verify_auth(am.DIGITAL_SIGNATURE, data, key.public_key(), OCTETS)
    assert a.is_pss(am.DIGITAL_SIGNATURE, data)
    with pytest.raises(AuthError, match="PSS"):
        a.verify_auth(am.DIGITAL_SIGNATURE, data, key.public_key(), OCTETS + b"x")


def test_pss_parameters_are_checked(key: rsa.RSAPrivateKey) -> None:
    # salt 20 announced, 32 used: the announced parameters are the ones verified
    wrong_salt = PSS_SHA256[:-1] + b"\x14"
    with pytest.raises(AuthError, match="does not verify"):
        a.verify_auth(am.DIGITAL_SIGNATURE, _pss_auth(key, wrong_salt), key.public_key(), OCTETS)
    # MGF1 with SHA-384 under SHA-256: refused with a message naming both
    mixed = PSS_SHA256.replace(
        bytes.fromhex("300d06096086480165030402010500a203"), bytes.fromhex("300d06096086480165030402020500a203")
    )
    with pytest.raises(AuthError, match="MGF1 with sha384"):
        a.verify_auth(am.DIGITAL_SIGNATURE, _pss_auth(key, mixed), key.public_key(), OCTETS)
    with pytest.raises(AuthError, match=r"truncated|bad length"):
        a.verify_auth(am.DIGITAL_SIGNATURE, _pss_auth(key, PSS_SHA256[:-3] + b"\xa2\x05\x02"), key.public_key(), OCTETS)


def test_we_sign_pss_as_charon_expects(key: rsa.RSAPrivateKey) -> None:
    method, data = a.sign_auth(key, OCTETS, {a.HASH_SHA256}, pss=True)
    assert method == am.DIGITAL_SIGNATURE and data[1 : 1 + data[0]] == PSS_SHA256
    sig = data[1 + data[0] :]
    key.public_key().verify(
        sig, OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
    )
    # without PSS, PKCS#1 v1.5 as before
    method, data = a.sign_auth(key, OCTETS, {a.HASH_SHA256})
    assert not a.is_pss(method, data)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("psspki"))


def _net(pki: Pki, i_pss: bool, r_pss: bool) -> Net:
    hi = pki.host("i-rsa", "rsa", ip=I_IP, dns="i.example")
    hr = pki.host("r-rsa", "rsa", ip=R_IP, dns="r.example")
    p1 = phase1(
        local_id="i.example",
        remote_id="r.example",
        auth=AuthMethod.RSA,
        psk=None,
        cert_file=hi.cert_file,
        key_file=hi.key_file,
        ca_file=pki.ca_file,
    )
    r1 = mirror1(p1, credentials=Credentials(cert_file=hr.cert_file, key_file=hr.key_file, ca_file=pki.ca_file))

    def settings(pss: bool) -> EngineSettings:
        extra: dict[str, object] = {"wall_clock": lambda: NOW_TS, "ikev2_cookie_guard": CookieGuard()}
        if pss:
            extra["rsa_pss"] = True
        return EngineSettings(extra=extra)

    p2 = phase2()
    return Net(
        p1,
        [p2],
        StaticPolicies([p1], [p2]),
        StaticPolicies([r1], [mirror2(p2)]),
        settings=settings(i_pss),
        r_settings=settings(r_pss),
    )


@pytest.mark.parametrize(
    ("i_pss", "r_pss", "expected"),
    [
        (False, False, [False, False]),
        (True, False, [True, True]),  # the responder answers in kind
        (False, True, [False, True]),
        (True, True, [True, True]),
    ],
)
def test_engines_sign_and_accept_pss(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, i_pss: bool, r_pss: bool, expected: list[bool]
) -> None:
    seen: list[bool] = []
    orig = a.sign_auth

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        m, d = orig(*args, **kw)
        seen.append(a.is_pss(m, d))
        return m, d

    monkeypatch.setattr(a, "sign_auth", spy)
    net = _net(pki, i_pss, r_pss)
    net.pump()
    assert not net.i.of(NegotiationFailed) and not net.r.of(NegotiationFailed)
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished)
    assert seen == expected
