"""Every mode and authentication method through a whole life: first datagram lost (retransmission),
quick mode with PFS, DPD rounds, phase 2 rekey, phase 1 rekey, deletes."""

from __future__ import annotations

import random

import pytest

from ike.policy import AuthMethod, Credentials, Identity
from ike.proto.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    EngineSettings,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
)

from .pair import A_IP, B_IP, Pair, mirror, phase1, phase2, policies_b
from .pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki-matrix"))


def _tunnels(pki: Pki, mode: str, auth: str):  # type: ignore[no-untyped-def]
    kw: dict[str, object] = {"mode": mode, "lifetime_s": 2000, "dpd": 60}
    if auth == "psk":
        a1, b1 = phase1(A_IP, B_IP, **kw), phase1(B_IP, A_IP, **kw)  # type: ignore[arg-type]
    else:
        kind = "rsa" if auth == "rsa" else "ecdsa"
        ha, hb = pki.host(f"a-{mode}-{auth}.example.org", kind), pki.host(f"b-{mode}-{auth}.example.org", kind)
        ida, idb = Identity.parse(ha.dn), Identity.parse(hb.dn)
        m = AuthMethod.RSA if auth == "rsa" else AuthMethod.ECDSA
        ca = Credentials(cert_file=ha.cert_file, key_file=ha.key_file, ca_file=pki.ca_file)
        cb = Credentials(cert_file=hb.cert_file, key_file=hb.key_file, ca_file=pki.ca_file)
        a1 = phase1(A_IP, B_IP, auth=m, creds=ca, local_id=ida, remote_id=idb, **kw)  # type: ignore[arg-type]
        b1 = phase1(B_IP, A_IP, auth=m, creds=cb, local_id=idb, remote_id=ida, **kw)  # type: ignore[arg-type]
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", pfs=19, lifetime_s=900)
    return a1, a2, b1, mirror(a2, b1)


@pytest.mark.parametrize("auth", ["psk", "rsa", "ecdsa"])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_whole_life(pki: Pki, mode: str, auth: str) -> None:
    a1, a2, b1, b2 = _tunnels(pki, mode, auth)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.wire.clear()  # the first datagram is lost: retransmission
    p.run(until=p.now + 30)
    assert len(p.events("a", IkeSaEstablished)) == 1, p.events("a", NegotiationFailed) + p.events(
        "b", NegotiationFailed
    )
    assert len(p.events("a", ChildSaEstablished)) == 1
    n_before = len(p.log)
    p.advance(200)  # DPD rounds (60 s)
    assert len(p.log) > n_before and not p.events("a", IkeSaDeleted)
    p.advance(700)  # phase 2 rekey before 900 s
    ca = p.events("a", ChildSaEstablished)
    assert len(ca) == 2 and ca[1].rekey_of == ca[0].child_id
    assert [d.reason for d in p.events("b", ChildSaDeleted)] == ["rekeyed"]
    p.advance(1000)  # phase 1 rekey before 2000 s (a new responder engine on b's side)
    ia = p.events("a", IkeSaEstablished)
    assert len(ia) >= 2 and ia[1].rekey_of == ia[0].sa_id
    assert "rekeyed" in [d.reason for d in p.events("a", IkeSaDeleted)]
    assert "deleted by peer" in [d.reason for d in p.events("b", IkeSaDeleted)]
    # deletes under the new SA
    live = [c for c in p.a.child_ids()]
    assert live
    p.a.delete_child(live[-1], p.now)
    p.collect()
    p.run()
    assert p.events("a", ChildSaDeleted)[-1].reason == "deleted locally"
    p.a.delete(p.now)
    p.collect()
    p.run()
    assert not p.a.is_established()
    assert not p.events("a", NegotiationFailed) and not p.events("b", NegotiationFailed)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("auth", ["psk", "rsa", "ecdsa"])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_a_third_of_datagrams_lost(pki: Pki, mode: str, auth: str, seed: int) -> None:
    a1, a2, b1, b2 = _tunnels(pki, mode, auth)
    p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(retransmit_tries=8))
    # Seeded random loss; every other datagram lost (both parities) is in test_strict_loss.py.
    rng = random.Random(seed)
    p.drop = lambda i, to, dg: rng.random() < 1 / 3
    if rng.random() < 1 / 3:
        p.wire.clear()
    p.run(until=p.now + 120)
    assert len(p.events("a", IkeSaEstablished)) == 1 and len(p.events("b", IkeSaEstablished)) == 1
    ca, cb = p.events("a", ChildSaEstablished), p.events("b", ChildSaEstablished)
    assert len(ca) == 1 and len(cb) == 1 and ca[0].inbound == cb[0].outbound
