"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities, authentication and the first CHILD SA.

    initiator  HDR, SK {IDi, [CERT+], [CERTREQ], AUTH, [N(INITIAL_CONTACT)],
                        [N(USE_TRANSPORT_MODE)], SAi2, TSi, TSr}  -->
               <--  HDR, SK {IDr, [CERT+], AUTH, [N(USE_TRANSPORT_MODE)], SAr2, TSi, TSr}

CERT goes to a peer that sent CERTREQ (the responder's in IKE_SA_INIT, the initiator's in IKE_AUTH),
or always with `EngineSettings.extra["send_cert"] = "always"`; our CERTREQ names the configured CAs.

The responder picks the tunnel definition by the initiator's identity (IDi) and checks it with that
definition's credentials: a pre-shared key, or a certificate chaining to the configured CA whose
subject or subjectAltName is the identity, and a signature by its key (RFC 7427 or classic methods).
A failed first child does not fail the IKE SA (§1.2): its error notify goes in place of SA/TS.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ike.policy import AuthMethod, Identity, Phase1Tunnel, Phase2Tunnel
from ike.proto import certs, identity
from ike.proto.certs import AuthError
from ike.proto.identity import IdentityError, identities_match
from ike.proto.v2 import auth as a
from ike.proto.v2.exchanges import child_create
from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.payloads import auth as am
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.auth import AuthPayload
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.cert import X509_SIGNATURE, CertPayload, CertReqPayload
from ike.proto.v2.payloads.header import IKE_AUTH
from ike.proto.v2.payloads.id import IdiPayload, IdPayload, IdrPayload
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.state import IkeSa, IkeState

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine

# Peers and our definitions present the same few identities in every IKE_AUTH: each is converted once
# (identities are immutable, the ID data is bytes; an IdentityError is raised each time, never cached).
_cached_from_wire = functools.lru_cache(maxsize=256)(identity.identity_from_wire)
identity_to_wire = functools.lru_cache(maxsize=256)(identity.identity_to_wire)


def identity_from_wire(id_type: int, data: bytes) -> Identity:
    # Only ordinary sizes are kept, so what a peer can make the cache hold stays small.
    return _cached_from_wire(id_type, data) if len(data) <= 256 else identity.identity_from_wire(id_type, data)


_KIND = {AuthMethod.RSA: "rsa", AuthMethod.ECDSA: "ecdsa", AuthMethod.ED25519: "ed25519"}


def own_auth(eng: Ikev2Engine, sa: IkeSa, p1: Phase1Tunnel, id_body: bytes) -> list[Payload]:
    """Our CERT (if any) and AUTH payloads. Raises AuthError when our credentials are unusable."""
    assert sa.keys is not None and sa.proposal is not None
    if sa.initiator:
        octets = a.signed_octets(sa.init_request, sa.nr, sa.proposal.prf, sa.keys.sk_pi, id_body)
    else:
        octets = a.signed_octets(sa.init_response, sa.ni, sa.proposal.prf, sa.keys.sk_pr, id_body)
    method = p1.policy.auth
    if method is AuthMethod.PSK:
        if not p1.credentials.psk:
            raise AuthError(f"tunnel {p1.name} uses a pre-shared key but none is configured")
        return [AuthPayload(method=am.PSK, data=a.psk_auth(sa.proposal.prf, p1.credentials.psk, octets))]
    cert, key = eng.own_credentials(p1)
    if certs.key_kind(key) != _KIND[method]:
        raise AuthError(f"tunnel {p1.name} says {method.value} but the private key is {certs.key_kind(key)}")
    # RSASSA-PSS when configured, or in kind to a peer that signed with it (it may accept nothing else).
    pss = bool(eng.settings.extra.get("rsa_pss", False)) or sa.peer_pss
    m, data = a.sign_auth(key, octets, sa.peer_hashes, pss=pss)
    out: list[Payload] = []
    # As strongSwan's default send_cert = ifasked: a peer that sent no CERTREQ has our certificate
    # configured and needs none; "send_cert": "always" sends it regardless.
    if sa.peer_wants_cert or eng.settings.extra.get("send_cert") == "always":
        from cryptography.hazmat.primitives.serialization import Encoding

        out.append(CertPayload(encoding=X509_SIGNATURE, data=cert.public_bytes(Encoding.DER)))
    return [*out, AuthPayload(method=m, data=data)]


def verify_peer(
    eng: Ikev2Engine, sa: IkeSa, p1: Phase1Tunnel, msg: Message, idp: IdPayload, peer_id: Identity, now: float
) -> None:
    """Raise AuthError unless the peer's AUTH proves `peer_id` under `p1`'s credentials."""
    assert sa.keys is not None and sa.proposal is not None
    auth = msg.get(AuthPayload)
    if auth is None:
        raise AuthError("peer sent no AUTH payload")
    body = idp.encode_body()
    if sa.initiator:
        octets = a.signed_octets(sa.init_response, sa.ni, sa.proposal.prf, sa.keys.sk_pr, body)
    else:
        octets = a.signed_octets(sa.init_request, sa.nr, sa.proposal.prf, sa.keys.sk_pi, body)
    method = p1.policy.auth
    if method is AuthMethod.PSK:
        if auth.method != am.PSK:
            raise AuthError(
                f"peer authenticated with {am.METHOD_NAMES.get(auth.method, auth.method)}, "
                f"but tunnel {p1.name} uses a pre-shared key"
            )
        if not p1.credentials.psk:
            raise AuthError(f"tunnel {p1.name} uses a pre-shared key but none is configured")
        a.verify_psk(sa.proposal.prf, p1.credentials.psk, octets, auth.data)
        return
    if auth.method == am.PSK:
        raise AuthError(
            f"peer authenticated with a pre-shared key, but tunnel {p1.name} requires {method.value} certificates"
        )
    cps = [c for c in msg.all(CertPayload) if c.encoding == X509_SIGNATURE]
    if not cps:
        raise AuthError("peer sent no X.509 certificate (CERT payload)")
    leaf = certs.parse_certificate(cps[0].data)
    inter = [certs.parse_certificate(c.data) for c in cps[1:]]
    if not p1.credentials.ca_file:
        raise AuthError(f"tunnel {p1.name} has no CA certificate configured to check the peer against")
    certs.verify_chain(leaf, inter, eng.ca_certs(p1.credentials.ca_file), eng.wall_time(now))
    if not certs.cert_identity_matches(peer_id, leaf):
        raise AuthError(
            f"peer certificate {leaf.subject.rfc4514_string()} does not contain its identity "
            f"{peer_id.type.label} {peer_id}"
        )
    pub = leaf.public_key()
    if not isinstance(pub, certs.PublicKey):  # type: ignore[misc,arg-type]
        raise AuthError(f"peer certificate key type {type(pub).__name__} is not supported")
    if certs.key_kind(pub) != _KIND[method]:  # type: ignore[arg-type]
        raise AuthError(
            f"tunnel {p1.name} requires {method.value} but the peer's certificate key is {certs.key_kind(pub)}"
        )  # type: ignore[arg-type]
    a.verify_auth(auth.method, auth.data, pub, octets)  # type: ignore[arg-type]
    sa.peer_pss = a.is_pss(auth.method, auth.data)


class IkeAuth(Task):
    exchange = IKE_AUTH
    name = "IKE_AUTH"
    runs_in = frozenset({IkeState.INIT_SENT})

    def __init__(self, phase2: Phase2Tunnel | None) -> None:
        self.phase2 = phase2
        self.offer: child_create.ChildOffer | None = None

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        p1 = sa.phase1
        assert p1 is not None
        sa.local_id = p1.local_id
        try:
            t, d = identity_to_wire(p1.local_id)
            idp = IdiPayload(id_type=t, data=d)
            auth = own_auth(eng, sa, p1, idp.encode_body())
        except (AuthError, IdentityError) as e:
            eng.fail(sa, 1, f"cannot authenticate ourselves: {e}")
            return None
        out: list[Payload] = [idp]
        out += [p for p in auth if isinstance(p, CertPayload)]
        from ike.proto.v2.exchanges.ike_init import certreq_payloads

        out += certreq_payloads(eng, p1.policy.auth, p1.credentials.ca_file)
        out += [p for p in auth if isinstance(p, AuthPayload)]
        if eng.send_initial_contact and not sa.initial_contact_sent:
            out.append(NotifyPayload(notify_type=n.INITIAL_CONTACT))
            sa.initial_contact_sent = True
        if self.phase2 is not None:
            self.offer = child_create.ChildOffer.make(eng, self.phase2, 0, False)
            out += self.offer.payloads()
        eng.set_state(sa, IkeState.AUTH_SENT)
        return out

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        p1 = sa.phase1
        assert p1 is not None
        idp = msg.get(IdrPayload)
        auth = msg.get(AuthPayload)
        if idp is None or auth is None:
            err = msg.error_notify()
            name = n.notify_name(err.notify_type) if err else "a response without IDr and AUTH"
            eng.fail(
                sa, 1, f"responder refused IKE_AUTH: {name}", notify=n.notify_name(err.notify_type) if err else None
            )
            return Result.DONE
        try:
            peer_id = identity_from_wire(idp.id_type, idp.data)
        except IdentityError as e:
            eng.fail(sa, 1, f"responder's identity is invalid: {e}", notify="AUTHENTICATION_FAILED")
            return Result.DONE
        if not identities_match(p1.remote_id, peer_id):
            eng.tell_auth_failed(sa)
            eng.fail(
                sa,
                1,
                f"responder identifies as {peer_id.type.label} {peer_id}, the definition expects "
                f"{p1.remote_id.type.label} {p1.remote_id}",
                offered=(f"remote id {p1.remote_id.type.label} {p1.remote_id}",),
                peer_offered=(f"IDr {peer_id.type.label} {peer_id}",),
                notify="AUTHENTICATION_FAILED",
            )
            return Result.DONE
        try:
            verify_peer(eng, sa, p1, msg, idp, peer_id, now)
        except AuthError as e:
            eng.tell_auth_failed(sa)
            eng.fail(sa, 1, f"responder failed authentication: {e}", notify="AUTHENTICATION_FAILED")
            return Result.DONE
        sa.remote_id = peer_id
        eng.establish_ike(sa, now)
        if self.offer is not None:
            child_create.process_response(eng, sa, msg, self.offer, sa.ni, sa.nr, now)
        return Result.DONE


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Reply:
    idp = msg.get(IdiPayload)
    if idp is None or msg.get(AuthPayload) is None:
        eng.fail(sa, 1, "IKE_AUTH request lacks IDi or AUTH", notify="INVALID_SYNTAX", kill=False)
        return Reply([NotifyPayload(notify_type=n.INVALID_SYNTAX)], [lambda: eng.kill_sa(sa, "", now, quiet=True)])
    if msg.notify(n.EAP_ONLY_AUTHENTICATION) is None and msg.notify(n.ANOTHER_AUTH_FOLLOWS) is not None:
        eng.fail(
            sa,
            1,
            "peer wants multiple authentication rounds (RFC 4739), which are not supported",
            notify="AUTHENTICATION_FAILED",
            kill=False,
        )
        return _auth_failed(eng, sa, now)
    try:
        peer_id = identity_from_wire(idp.id_type, idp.data)
    except IdentityError as e:
        eng.fail(sa, 1, f"peer's identity is invalid: {e}", notify="AUTHENTICATION_FAILED", kill=False)
        return _auth_failed(eng, sa, now)
    p1 = eng.policies.phase1_by_identity(sa.local[0], sa.remote[0], peer_id)
    if p1 is None or p1.policy.version != 2:
        eng.fail(
            sa,
            1,
            f"no IKEv2 tunnel definition for peer identity {peer_id.type.label} {peer_id} from {sa.remote[0]}",
            offered=tuple(f"remote id {c.remote_id.type.label} {c.remote_id}" for c in sa.candidates),
            peer_offered=(f"IDi {peer_id.type.label} {peer_id}",),
            notify="AUTHENTICATION_FAILED",
            kill=False,
        )
        return _auth_failed(eng, sa, now)
    sa.phase1 = p1
    # The initiator's CERTREQ comes in IKE_AUTH (RFC 7296 §1.2); one in IKE_SA_INIT counts too.
    sa.peer_wants_cert = sa.peer_wants_cert or msg.get(CertReqPayload) is not None
    if sa.proposal not in p1.policy.proposals:
        from ike.proto.v2 import proposals as props

        eng.fail(
            sa,
            1,
            f"the IKE proposal negotiated ({sa.proposal}) is not one of tunnel {p1.name}'s",
            offered=props.describe_ike(p1.policy.proposals),
            peer_offered=(f"IKE {sa.proposal}",),
            notify="AUTHENTICATION_FAILED",
            kill=False,
        )
        return _auth_failed(eng, sa, now)
    try:
        verify_peer(eng, sa, p1, msg, idp, peer_id, now)
        t, d = identity_to_wire(p1.local_id)
        idr = IdrPayload(id_type=t, data=d)
        mine = own_auth(eng, sa, p1, idr.encode_body())
    except (AuthError, IdentityError) as e:
        eng.fail(sa, 1, f"authentication of {peer_id} failed: {e}", notify="AUTHENTICATION_FAILED", kill=False)
        return _auth_failed(eng, sa, now)
    sa.remote_id = peer_id
    sa.local_id = p1.local_id
    eng.establish_ike(sa, now, initial_contact=msg.notify(n.INITIAL_CONTACT) is not None)
    out: list[Payload] = [idr, *mine]
    child_payloads, child = child_create.negotiate_r(eng, sa, msg, sa.ni, sa.nr, now, in_ike_auth=True)
    if child is not None:
        eng.add_child(sa, child, now)
    out += child_payloads
    return Reply(out)


def _auth_failed(eng: Ikev2Engine, sa: IkeSa, now: float) -> Reply:
    return Reply([NotifyPayload(notify_type=n.AUTHENTICATION_FAILED)], [lambda: eng.kill_sa(sa, "", now, quiet=True)])
