"""One targeted test each for behaviour the pair and certificate tests pass over: INITIAL_CONTACT,
ECDSA P-521, IPv6 identities with certificates, an IKE rekey retried after INVALID_KE_PAYLOAD, an
unknown critical payload inside SK, invalid DH public values wherever a KE arrives, and a forged
AUTH signature. Messages are altered on the wire (wire.tamper), the engines are the real ones."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest

from ike.policy import IkeProposal
from ike.proto.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PacketDropped,
)
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2.engine import Ikev2Engine
from ike.proto.v2.payloads import (
    AuthPayload,
    IdiPayload,
    IkeHeader,
    KePayload,
    NotifyPayload,
    Payload,
    UnknownPayload,
    encode_chain,
)
from ike.proto.v2.payloads import auth as am
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.header import CREATE_CHILD_SA, IKE_AUTH, IKE_SA_INIT, INFORMATIONAL

from .certs_fixture import Pki, make_pki
from .harness import I_IP, R_IP, Net, mirror1, mirror2, phase1, phase2
from .lifecycle import child_pair, established
from .test_engine_certs import cert_pair, settings
from .test_engine_pairs import pair
from .wire import KeyLog, messages, remember_keys, tamper


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("targeted-pki"))


def no_internal_errors(*engines: Ikev2Engine | None) -> None:
    for e in engines:
        assert e is not None and e.stats["internal errors"] == 0


def notifies(payloads: list[Payload]) -> list[int]:
    return [p.notify_type for p in payloads if isinstance(p, NotifyPayload)]


# --- INITIAL_CONTACT --------------------------------------------------------------------------------


def test_initial_contact_reaches_the_responders_event() -> None:
    log = KeyLog()
    net = log.net = pair(drop=log)
    net.pump()
    ei, er = established(net)
    assert er.initial_contact and not ei.initial_contact
    (req,) = [ps for s, ex, resp, ps in messages(net, log.keys, IKE_AUTH) if s == "i" and not resp]
    assert n.INITIAL_CONTACT in notifies(req)
    # A rekey is the same association: the new IKE SA carries no INITIAL_CONTACT.
    assert net.i.engine is not None
    net.i.engine.rekey_ike(net.now)
    net.pump()
    _, er2 = established(net)
    assert er2.rekey_of == er.sa_id and not er2.initial_contact


# --- ECDSA P-521 ------------------------------------------------------------------------------------

ECDSA_SHA512_ALG = bytes.fromhex("300a06082a8648ce3d040304")  # RFC 7427 A.3.3 ecdsa-with-SHA512


@pytest.mark.parametrize("classic", [True, False], ids=["method-11", "rfc7427"])
def test_ecdsa_p521(pki: Pki, classic: bool) -> None:
    log = KeyLog()
    net = log.net = cert_pair(pki, "ecdsa521", "i.example", "r.example", classic=classic, drop=log)
    net.pump()
    established(net)
    child_pair(net)
    auths = [p for _, _, _, ps in messages(net, log.keys, IKE_AUTH) for p in ps if isinstance(p, AuthPayload)]
    assert len(auths) == 2
    for a in auths:
        if classic:
            assert a.method == am.ECDSA_521 == 11
            assert len(a.data) == 132  # r | s, 66 bytes each (RFC 4754 §7)
        else:
            assert a.method == am.DIGITAL_SIGNATURE
            assert a.data[0] == len(ECDSA_SHA512_ALG) and a.data[1 : 1 + a.data[0]] == ECDSA_SHA512_ALG


# --- IPv6 address identities with certificates --------------------------------------------------------

V6 = ("2001:db8::1", "2001:db8::2")


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_ipv6_identity_with_certificates(pki: Pki, kind: str) -> None:
    log = KeyLog()
    net = log.net = cert_pair(pki, kind, V6[0], V6[1], san_ips=V6, addresses=V6, drop=log)
    net.pump()
    ei, er = established(net)
    assert str(er.remote_id) == V6[0] and str(ei.remote_id) == V6[1]
    assert er.remote == (V6[0], 500)
    (idi,) = [
        p for s, _, _, ps in messages(net, log.keys, IKE_AUTH) if s == "i" for p in ps if isinstance(p, IdiPayload)
    ]
    assert (idi.id_type, idi.data) == (5, ipaddress.IPv6Address(V6[0]).packed)  # ID_IPV6_ADDR


def test_ipv6_identity_not_in_certificate_fails(pki: Pki) -> None:
    net = cert_pair(pki, "ecdsa", "2001:db8::9", V6[1], san_ips=V6, addresses=V6)
    net.pump()
    f = net.r.of(NegotiationFailed)
    assert f and "does not contain its identity" in f[0].reason and "2001:db8::9" in f[0].reason
    assert f[0].notify == "AUTHENTICATION_FAILED"
    assert not net.r.of(IkeSaEstablished)


# --- IKE SA rekey retried after INVALID_KE_PAYLOAD --------------------------------------------------------


def test_ike_rekey_retried_with_the_group_the_responder_asks_for() -> None:
    g31 = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31)
    g19 = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 19)
    p1, p2 = phase1(proposals=(g31, g19)), phase2()
    # IKE_SA_INIT is answered from the definitions for the address pair (a decoy for another identity
    # first: curve25519 chosen); the rekey from the one the identity picked, which prefers ECP-256.
    decoy = phase1(5, R_IP, "someone@example", R_IP, I_IP, proposals=(g31,), name="decoy")
    r1 = mirror1(p1, policy=phase1(proposals=(g19, g31)).policy)
    log = KeyLog()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([decoy, r1], [mirror2(p2)]), drop=log)
    log.net = net
    net.pump()
    ei, er = established(net)
    assert ei.proposal.dh == 31
    assert net.i.engine is not None
    net.i.engine.rekey_ike(net.now)
    net.pump()
    ni, nr = established(net)
    assert ni.rekey_of == ei.sa_id and nr.rekey_of == er.sa_id
    assert ni.proposal == nr.proposal == g19
    assert not net.i.of(NegotiationFailed) and not net.r.of(NegotiationFailed)
    rekey = [(s, resp, ps) for s, _, resp, ps in messages(net, log.keys, CREATE_CHILD_SA)]
    kes = [p.group for s, resp, ps in rekey if s == "i" and not resp for p in ps if isinstance(p, KePayload)]
    assert kes == [31, 19]
    first_answer = next(ps for s, resp, ps in rekey if s == "r" and resp)
    (inv,) = [p for p in first_answer if isinstance(p, NotifyPayload)]
    assert inv.notify_type == n.INVALID_KE_PAYLOAD and inv.data == struct.pack("!H", 19)
    assert [e.reason for e in net.i.of(IkeSaDeleted)] == ["rekeyed"]
    assert len(net.i.engine.child_sas()) == 1


# --- an unknown critical payload inside SK ------------------------------------------------------------------


@pytest.mark.parametrize("exchange", [INFORMATIONAL, CREATE_CHILD_SA])
def test_unknown_critical_payload_in_sk_answered(exchange: int) -> None:
    net = pair()
    net.pump()
    established(net)
    i, r = net.i.engine, net.r.engine
    assert i is not None and r is not None and i.sa is not None and i.sa.out is not None
    sa = i.sa
    h = IkeHeader(sa.spi_i, sa.spi_r, 0, exchange, 0x08, sa.next_msg_id)
    first, inner = encode_chain([UnknownPayload(True, 200, b"boom")])
    before = r.stats["dropped"]
    net.deliver_to_r(net._to_r(Datagram(sa.out.seal(h, first, inner), (I_IP, 500), (R_IP, 500))))
    net._collect()
    (answer,) = r.datagrams_to_send()
    keys = remember_keys(net)
    net.wire.append(("r", answer))
    ((_, ex, resp, payloads),) = messages(net, keys, exchange)[-1:]
    assert (ex, resp) == (exchange, True)
    (note,) = payloads
    assert isinstance(note, NotifyPayload)
    assert (note.notify_type, note.data) == (n.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([200]))
    assert r.stats["dropped"] == before + 1
    dropped = [e.reason for e in net.r.of(PacketDropped)]
    assert any("unsupported critical payload type 200" in d for d in dropped), dropped
    # The request was answered, so the exchange is over: the IKE SA carries on.
    assert r.is_established()
    sa.next_msg_id += 1  # the message ID the forged request used
    extra = phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24")
    net.r_policies.add(mirror2(extra))
    i.start_child(extra, net.now)
    net.pump()
    assert len(net.i.of(ChildSaEstablished)) == 2
    no_internal_errors(i, r)


# --- invalid DH public values --------------------------------------------------------------------------------

BAD_X25519 = bytes(32)  # a low-order point: the shared secret would be all zeros (RFC 7748 §6.1)
BAD_P256 = b"\x01" * 64  # not on the curve


def bad_ke(data: bytes) -> Callable[[list[Payload]], list[Payload]]:
    def edit(payloads: list[Payload]) -> list[Payload]:
        return [replace(p, data=data) if isinstance(p, KePayload) else p for p in payloads]

    return edit


def test_invalid_dh_value_in_the_ike_sa_init_response() -> None:
    net = pair()
    seen = tamper(net, "i", IKE_SA_INIT, True, bad_ke(BAD_X25519))
    net.pump()
    assert seen
    f = net.i.of(NegotiationFailed)
    assert f and "responder's key exchange value is invalid" in f[0].reason and "group 31" in f[0].reason
    assert f[0].notify == "INVALID_SYNTAX" and f[0].phase == 1
    assert net.i.engine is not None and net.i.engine.stats["failed"] == 1
    assert not net.i.of(IkeSaEstablished) and not net.i.engine.is_established()
    no_internal_errors(net.i.engine)


@pytest.mark.parametrize("to", ["r", "i"], ids=["in-request", "in-response"])
def test_invalid_dh_value_in_a_pfs_ke(to: str) -> None:
    p2 = phase2(2, local="198.18.11.0/24", remote="198.18.21.0/24", pfs_group=19)
    net = pair(p2s=[phase2()], r_p2s=[mirror2(phase2()), mirror2(p2)])
    net.pump()
    established(net)
    seen = tamper(net, to, CREATE_CHILD_SA, to == "i", bad_ke(BAD_P256))
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.start_child(p2, net.now)
    net.pump()
    assert seen and any(isinstance(p, KePayload) and p.group == 19 for p in seen[0])
    rejecter = net.r if to == "r" else net.i
    f = [e for e in rejecter.of(NegotiationFailed) if "PFS key exchange value is invalid" in e.reason]
    assert f and f[0].phase == 2 and f[0].phase2 is not None and f[0].phase2.number == 2, rejecter.events
    assert "group 19" in f[0].reason
    assert rejecter.engine is not None and rejecter.engine.stats["failed"] >= 1
    if to == "r":
        assert f[0].notify == "INVALID_SYNTAX"
        assert any(e.notify == "INVALID_SYNTAX" for e in net.i.of(NegotiationFailed))
        assert len(net.r.of(ChildSaEstablished)) == 1
    else:
        # The responder had installed the child we refused: our Delete takes it away there too.
        (made,) = net.r.of(ChildSaEstablished)[1:]
        assert [d.child_id for d in net.r.of(ChildSaDeleted)] == [made.child_id], net.r.events
    assert len(net.i.of(ChildSaEstablished)) == 1  # only the first child
    assert net.i.engine.is_established() and net.r.engine.is_established()
    no_internal_errors(net.i.engine, net.r.engine)


@pytest.mark.parametrize("to", ["r", "i"], ids=["in-request", "in-response"])
def test_invalid_dh_value_in_an_ike_rekey_ke(to: str) -> None:
    net = pair()
    net.pump()
    ei, er = established(net)
    seen = tamper(net, to, CREATE_CHILD_SA, to == "i", bad_ke(BAD_X25519))
    assert net.i.engine is not None and net.r.engine is not None
    net.i.engine.rekey_ike(net.now)
    net.pump()
    assert seen and any(isinstance(p, KePayload) and p.group == 31 for p in seen[0])
    rejecter = net.r if to == "r" else net.i
    f = [e for e in rejecter.of(NegotiationFailed) if "IKE rekey key exchange value is invalid" in e.reason]
    assert f and f[0].phase == 1 and "group 31" in f[0].reason, rejecter.events
    assert rejecter.engine is not None and rejecter.engine.stats["failed"] >= 1
    if to == "r":
        assert f[0].notify == "INVALID_SYNTAX"
        refused = [e for e in net.i.of(NegotiationFailed) if "refused to rekey" in e.reason]
        assert refused and refused[0].notify == "INVALID_SYNTAX"
        # Nothing was replaced: the original IKE SA and its child carry on at both ends.
        assert [e.sa_id for e in net.r.of(IkeSaEstablished)] == [er.sa_id]
        assert net.r.engine.sa is not None and net.r.engine.sa.sa_id == er.sa_id
    assert [e.sa_id for e in net.i.of(IkeSaEstablished)] == [ei.sa_id]  # the rejecting initiator kept its SA
    assert net.i.engine.is_established()
    no_internal_errors(net.i.engine, net.r.engine)


# --- a forged AUTH signature --------------------------------------------------------------------------------


def forge(payloads: list[Payload]) -> list[Payload]:
    out: list[Payload] = []
    for p in payloads:
        if isinstance(p, AuthPayload):
            p = replace(p, data=p.data[:-1] + bytes([p.data[-1] ^ 0x01]))
        out.append(p)
    return out


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
@pytest.mark.parametrize("to", ["r", "i"], ids=["initiator-forged", "responder-forged"])
def test_forged_auth_signature(pki: Pki, kind: str, to: str) -> None:
    whole = replace(settings(), fragment_size=0)  # one datagram per message, so it can be rewritten
    net = cert_pair(pki, kind, "i.example", "r.example", i_settings=whole, r_settings=whole)
    seen = tamper(net, to, IKE_AUTH, to == "i", forge)
    net.run(10)
    assert seen
    fi, fr = net.i.of(NegotiationFailed), net.r.of(NegotiationFailed)
    assert not net.i.of(IkeSaEstablished)
    want = {"rsa": "rsa signature", "ecdsa": "ecdsa signature", "ed25519": "ed25519 signature"}[kind]
    if to == "r":
        assert fr and fr[0].notify == "AUTHENTICATION_FAILED" and want in fr[0].reason, fr
        assert "does not verify" in fr[0].reason and "i.example" in fr[0].reason
        assert not net.r.of(IkeSaEstablished)
        assert fi and fi[0].notify == "AUTHENTICATION_FAILED"
    else:
        assert fi and fi[0].notify == "AUTHENTICATION_FAILED" and want in fi[0].reason, fi
        assert "responder failed authentication" in fi[0].reason and "does not verify" in fi[0].reason
        # The responder had the SA up; it is told (RFC 7296 §2.21.2) and closes it.
        assert net.r.of(IkeSaEstablished)
        deleted = net.r.of(IkeSaDeleted)
        assert deleted and "AUTHENTICATION_FAILED" in deleted[0].reason
    assert net.i.engine is not None and not net.i.engine.is_established()
    assert net.r.engine is not None and not net.r.engine.is_established()
    no_internal_errors(net.i.engine, net.r.engine)
