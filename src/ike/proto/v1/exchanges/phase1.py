"""What Main Mode and Aggressive Mode share (strongSwan keeps this in phase1.c): proposal offer and
choice, the key exchange and nonces, SKEYID and the phase 1 keys, NAT-D, identities and the
authentication payloads (HASH for pre-shared keys, CERT + SIG for signatures).
"""

from __future__ import annotations

import enum
import functools
import hmac
import ipaddress
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ike.policy import AuthMethod, Identity, IdType, Phase1Tunnel
from ike.proto.api import Datagram, EngineSettings, PolicySource, Role
from ike.proto.crypto import CryptoError, DhPrivate
from ike.proto.identity import (
    IdentityError,
    dn_equal,
    identities_match,
    identity_from_wire,
    identity_to_wire,
    parse_dn,
)
from ike.proto.transforms import DH, ENCR
from ike.proto.v1 import natt
from ike.proto.v1.auth import (
    AuthFailure,
    LocalCredentials,
    hash_i,
    hash_r,
    verify_peer_certificate,
    verify_signature,
)
from ike.proto.v1.exchanges.errors import Drop, ExchangeFailed
from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.keys import derive_skeyids, phase1_iv, skeyid_psk, skeyid_sig
from ike.proto.v1.payloads import (
    Attr,
    CertPayload,
    CertReqPayload,
    DecodeError,
    HashPayload,
    IdPayload,
    KePayload,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    SaPayload,
    SigPayload,
    VendorIdPayload,
)
from ike.proto.v1.payloads.attributes import decode_attrs
from ike.proto.v1.payloads.cert import CERT_X509_SIGNATURE
from ike.proto.v1.payloads.chain import Decoded
from ike.proto.v1.payloads.header import Header
from ike.proto.v1.payloads.natd import NatDDraftPayload
from ike.proto.v1.payloads.notify import notify_name
from ike.proto.v1.payloads.sa import PROTO_ISAKMP
from ike.proto.v1.proposals import (
    LIFE_KB,
    LIFE_SECONDS,
    P1_LIFE_DURATION,
    P1_LIFE_TYPE,
    Phase1Choice,
    auth_from_value,
    choose_phase1,
    peer_phase1,
    phase1_lines,
    phase1_sa,
)

NONCE_LEN = 32
DEFAULT_P1_LIFETIME = 28800  # RFC 2407 §4.5: what a proposal without a lifetime means
# A peer sends the same identity in every phase 1 (Identity is immutable; errors are not kept).
_identity_from_wire = functools.lru_cache(maxsize=1024)(identity_from_wire)


@dataclass
class Phase1Context:
    policies: PolicySource
    settings: EngineSettings
    initial_contact: bool = False  # send INITIAL-CONTACT (no earlier SA with this peer)


def is_wildcard(identity: Identity) -> bool:
    return identity.value in ("0.0.0.0", "::", "%any", "any", "*")  # noqa: S104 (not a bind address)


def find(payloads: Sequence[Decoded], cls: type) -> list[Decoded]:
    return [d for d in payloads if isinstance(d.payload, cls)]


def one(payloads: Sequence[Decoded], cls: type, what: str) -> Decoded:
    found = find(payloads, cls)
    if len(found) != 1:
        raise Drop(f"expected exactly one {what} payload, got {len(found)}")
    return found[0]


def new_nonce() -> bytes:
    return os.urandom(32)


class Phase1Exchange:
    """State shared by the two phase 1 exchanges; subclasses hold the state table."""

    EXCHANGE = 0
    state: enum.Enum

    def __init__(self, sa: IsakmpSa, ctx: Phase1Context, tunnel: Phase1Tunnel | None) -> None:
        self.sa = sa
        self.ctx = ctx
        self.tunnel = tunnel
        self.creds: LocalCredentials | None = None
        self.dh: DhPrivate | None = None
        self.gxi = self.gxr = self.ni = self.nr = b""
        self.sai_b = b""
        self.choice: Phase1Choice | None = None
        self.peer_vids: list[bytes] = []
        self.peer_certs: list[bytes] = []
        self.candidates: list[Phase1Tunnel] = []
        self.peer_lifetime_s = 0
        self.peer_lifetime_kb = 0
        self.send_responder_lifetime = False
        self.initial_contact_received = False
        self.opened: bytes | None = None  # the last message `open` decrypted (see the engine's _fail_phase1)
        # Pretend to be behind a NAT (as strongSwan's kernel-libipsec does) so that ESP goes over UDP.
        self.fake_nat = bool(ctx.settings.extra.get("force_udp_encap"))
        sa.nat_local = sa.nat_local or self.fake_nat
        if tunnel is not None:
            self._load_creds(tunnel)

    @property
    def role(self) -> Role:
        return self.sa.role

    # --- the state table, given by each exchange ---------------------------------------------------

    # (role, state) -> (step that handles the next inbound message, state after it)
    INBOUND: ClassVar[Mapping[tuple[Role, Any], tuple[str, Any]]] = {}
    # States in which our last message waits for an answer (and is retransmitted on a timer).
    AWAITING_REPLY: ClassVar[frozenset[Any]] = frozenset()
    ESTABLISHED: ClassVar[Any] = None
    mode_name = "phase 1"

    def start(self) -> bytes:
        raise NotImplementedError

    def receive(self, dg: Datagram, h: Header, now: float) -> bytes | None:
        step = self.INBOUND.get((self.role, self.state))
        if step is None:
            raise Drop(f"{self.mode_name} message in state {self.state.value}")
        if h.message_id != 0:
            raise Drop(f"{self.mode_name} message with a non-zero message ID")
        name, after = step
        out: bytes | None = getattr(self, name)(dg, h, now)
        self.state = after
        return out

    @property
    def established(self) -> bool:
        return self.state is self.ESTABLISHED

    @property
    def awaiting_reply(self) -> bool:
        return self.state in self.AWAITING_REPLY

    def _load_creds(self, tunnel: Phase1Tunnel) -> None:
        try:
            self.creds = LocalCredentials.load(tunnel)
        except AuthFailure as e:
            raise ExchangeFailed(str(e)) from None

    # --- proposals --------------------------------------------------------------------------------

    def offer(self, only_group: int | None = None) -> SaPayload:
        assert self.tunnel is not None and self.creds is not None
        pol = self.tunnel.policy
        props = tuple(p for p in pol.proposals if only_group is None or p.dh == only_group)
        try:
            sa = phase1_sa(props, self.creds.wire_method(), pol.lifetime_s, pol.lifetime_kb)
        except ValueError as e:
            raise ExchangeFailed(f"tunnel {self.tunnel.name}: {e}") from None
        self.sai_b = sa.body()
        return sa

    def offered_lines(self, tunnels: Sequence[Phase1Tunnel]) -> tuple[str, ...]:
        return tuple(
            f"{t.name}: {p} auth {t.policy.auth.value} life {t.policy.lifetime_s}s"
            for t in tunnels
            for p in t.policy.proposals
        )

    def choose(self, sa_d: Decoded, candidates: Sequence[Phase1Tunnel]) -> SaPayload:
        """Responder: the first candidate definition with a proposal the peer offers (local order)."""
        sa = sa_d.payload
        assert isinstance(sa, SaPayload)
        self.sai_b = sa_d.body
        peer = peer_phase1(sa)
        for t in candidates:
            choice = choose_phase1(t.policy.proposals, t.policy.auth, peer)
            if choice is not None:
                self.tunnel = t
                self.choice = choice
                self._load_creds(t)
                self._adopt_choice(choice)
                # Echo the chosen transform unchanged (RFC 2408 §4.2); a shorter lifetime of ours goes
                # in a RESPONDER-LIFETIME notify.
                pnum = next((p.number for p in sa.proposals if choice.transform in p.transforms), 1)
                return SaPayload((type(sa.proposals[0])(pnum, PROTO_ISAKMP, b"", (choice.transform,)),))
        if not candidates:
            raise ExchangeFailed(
                f"no IKEv1 {self.mode_name} tunnel is defined for {self.sa.local[0]} <-> {self.sa.remote[0]}",
                NotifyType.NO_PROPOSAL_CHOSEN,
            )
        raise ExchangeFailed(
            "no phase 1 proposal matches",
            NotifyType.NO_PROPOSAL_CHOSEN,
            offered=self.offered_lines(candidates),
            peer_offered=tuple(phase1_lines(sa)),
        )

    def _adopt_choice(self, choice: Phase1Choice) -> None:
        assert self.tunnel is not None
        pol = self.tunnel.policy
        peer_s = choice.lifetime_s or DEFAULT_P1_LIFETIME
        self.peer_lifetime_s, self.peer_lifetime_kb = peer_s, choice.lifetime_kb
        self.sa.proposal = choice.proposal
        self.sa.auth_method = choice.auth
        self.sa.phase1 = self.tunnel
        self.sa.lifetime_s = min(peer_s, pol.lifetime_s)
        kb = [x for x in (choice.lifetime_kb, pol.lifetime_kb) if x]
        self.sa.lifetime_kb = min(kb) if kb else 0
        self.send_responder_lifetime = pol.lifetime_s < peer_s or (
            bool(pol.lifetime_kb) and (not choice.lifetime_kb or pol.lifetime_kb < choice.lifetime_kb)
        )

    def accept_choice(self, sa_d: Decoded) -> None:
        """Initiator: the responder's SA must carry one transform that we offered."""
        assert self.tunnel is not None
        sa = sa_d.payload
        assert isinstance(sa, SaPayload)
        ts = [t for p in sa.proposals for t in p.transforms]
        if len(sa.proposals) != 1 or len(ts) != 1:
            raise ExchangeFailed(
                "the responder's SA payload must carry exactly one transform", NotifyType.BAD_PROPOSAL_SYNTAX
            )
        choice = choose_phase1(self.tunnel.policy.proposals, self.tunnel.policy.auth, peer_phase1(sa))
        if choice is None:
            raise ExchangeFailed(
                "the responder chose a phase 1 transform we did not offer",
                NotifyType.NO_PROPOSAL_CHOSEN,
                offered=self.offered_lines([self.tunnel]),
                peer_offered=tuple(phase1_lines(sa)),
            )
        self.choice = choice
        pol = self.tunnel.policy
        self.sa.proposal = choice.proposal
        self.sa.auth_method = choice.auth
        self.sa.phase1 = self.tunnel
        self.sa.lifetime_s = min(choice.lifetime_s or pol.lifetime_s, pol.lifetime_s)
        kb = [x for x in (choice.lifetime_kb, pol.lifetime_kb) if x]
        self.sa.lifetime_kb = min(kb) if kb else 0

    def responder_lifetime_notify(self) -> NotifyPayload:
        assert self.tunnel is not None
        pol = self.tunnel.policy
        attrs = [Attr(P1_LIFE_TYPE, LIFE_SECONDS), Attr(P1_LIFE_DURATION, self.sa.lifetime_s)]
        if self.sa.lifetime_kb:
            attrs += [Attr(P1_LIFE_TYPE, LIFE_KB), Attr(P1_LIFE_DURATION, min(pol.lifetime_kb, self.sa.lifetime_kb))]
        return NotifyPayload(
            PROTO_ISAKMP, NotifyType.RESPONDER_LIFETIME, self.sa.cookies, b"".join(a.encode() for a in attrs)
        )

    def process_status_notifies(self, payloads: Sequence[Decoded]) -> None:
        for d in find(payloads, NotifyPayload):
            n = d.payload
            assert isinstance(n, NotifyPayload)
            if n.notify_type == NotifyType.INITIAL_CONTACT:
                self.initial_contact_received = True
            elif n.notify_type == NotifyType.RESPONDER_LIFETIME and n.protocol == PROTO_ISAKMP:
                try:
                    attrs = decode_attrs(n.data)
                except DecodeError:
                    continue
                kind = None
                for a in attrs:
                    try:
                        if a.type == P1_LIFE_TYPE:
                            kind = a.as_int()
                        elif a.type == P1_LIFE_DURATION and kind == LIFE_SECONDS and a.as_int() > 0:
                            self.sa.lifetime_s = min(self.sa.lifetime_s, a.as_int())
                        elif a.type == P1_LIFE_DURATION and kind == LIFE_KB and a.as_int() > 0:
                            self.sa.lifetime_kb = min(self.sa.lifetime_kb or a.as_int(), a.as_int())
                    except DecodeError:
                        continue
            elif n.notify_type < 16384:
                name = notify_name(n.notify_type)
                raise ExchangeFailed(f"the peer reports {name}", received_notify=name)

    # --- key exchange -----------------------------------------------------------------------------

    def make_dh(self) -> bytes:
        assert self.sa.proposal is not None
        if self.dh is None:
            self.dh = DhPrivate(self.sa.proposal.dh)
        return self.dh.public

    @staticmethod
    def ke_nonce_payloads(ke: bytes, nonce: bytes) -> list[object]:
        return [KePayload(ke), NoncePayload(nonce)]

    def take_ke_nonce(self, payloads: Sequence[Decoded]) -> tuple[bytes, bytes]:
        ke = one(payloads, KePayload, "KE").payload
        nonce = one(payloads, NoncePayload, "nonce").payload
        assert isinstance(ke, KePayload) and isinstance(nonce, NoncePayload)
        assert self.sa.proposal is not None
        g = DH[self.sa.proposal.dh]
        if len(ke.data) != g.public_len:
            raise ExchangeFailed(
                f"the peer's DH group {g.number} value is {len(ke.data)} bytes, expected {g.public_len}",
                NotifyType.INVALID_KEY_INFORMATION,
            )
        return ke.data, nonce.data

    def derive_keys(self) -> None:
        assert self.dh is not None and self.sa.proposal is not None and self.tunnel is not None
        peer = self.gxr if self.role is Role.INITIATOR else self.gxi
        try:
            gxy = self.dh.shared(peer)
        except CryptoError as e:
            raise ExchangeFailed(str(e), NotifyType.INVALID_KEY_INFORMATION) from None
        prf_name = self.sa.proposal.prf
        if auth_from_value(self.sa.auth_method) is AuthMethod.PSK:
            assert self.creds is not None and self.creds.psk is not None
            skeyid = skeyid_psk(prf_name, self.creds.psk, self.ni, self.nr)
        else:
            skeyid = skeyid_sig(prf_name, self.ni, self.nr, gxy)
        keys = derive_skeyids(prf_name, skeyid, gxy, self.sa.cky_i, self.sa.cky_r)
        bs = 16 if self.sa.proposal.encr == "aes-cbc" else 8
        assert ENCR[self.sa.proposal.encr].aead is False
        self.sa.install_keys(keys, phase1_iv(prf_name, self.gxi, self.gxr, bs))

    # --- vendor IDs and NAT-D ---------------------------------------------------------------------

    @staticmethod
    def vendor_payloads() -> list[object]:
        return [VendorIdPayload(v) for v in natt.our_vendor_ids()]

    def take_vids(self, payloads: Sequence[Decoded]) -> None:
        for d in find(payloads, VendorIdPayload):
            assert isinstance(d.payload, VendorIdPayload)
            self.peer_vids.append(d.payload.data)
        self.sa.natt = max(self.sa.natt, natt.natt_from_vids(self.peer_vids))
        self.sa.peer_dpd = self.sa.peer_dpd or natt.has_dpd(self.peer_vids)

    def natd_payloads(self) -> list[object]:
        if not self.sa.natt:
            return []
        cls = NatDPayload if self.sa.natt == natt.NATT_RFC else NatDDraftPayload
        h = self.sa.prf_name
        remote = natt.natd_hash(h, self.sa.cky_i, self.sa.cky_r, *self.sa.remote)
        local = natt.natd_hash(h, self.sa.cky_i, self.sa.cky_r, *self.sa.local)
        if self.fake_nat:
            local = os.urandom(len(local))
        return [cls(remote), cls(local)]

    def check_natd(self, payloads: Sequence[Decoded], dg: Datagram) -> None:
        """Against the addresses the message really travelled between (after a port float too)."""
        found = [d.payload.data for d in payloads if isinstance(d.payload, NatDPayload)]
        if not self.sa.natt or not found:
            return
        if len(found) < 2:
            raise Drop("NAT-D needs at least two payloads (destination and source)")
        h = self.sa.prf_name
        ours = natt.natd_hash(h, self.sa.cky_i, self.sa.cky_r, *dg.local)
        theirs = natt.natd_hash(h, self.sa.cky_i, self.sa.cky_r, *dg.remote)
        self.sa.nat_local = self.sa.nat_local or found[0] != ours
        self.sa.nat_remote = not any(f == theirs for f in found[1:])

    def nat_detected(self) -> bool:
        return bool(self.sa.natt) and (self.sa.nat_local or self.sa.nat_remote)

    def float_ports(self) -> None:
        """Initiator: move to port 4500 (RFC 3947 §4) once NAT is detected."""
        if self.nat_detected() and self.sa.local[1] != natt.NATT_PORT:
            self.sa.local = (self.sa.local[0], natt.NATT_PORT)
            self.sa.remote = (self.sa.remote[0], natt.NATT_PORT)

    def follow_peer(self, dg: Datagram) -> None:
        """Responder: answer where the (authenticated) message came from."""
        self.sa.local = dg.local
        self.sa.remote = dg.remote

    # --- identities and authentication ------------------------------------------------------------

    def id_payload(self) -> IdPayload:
        assert self.tunnel is not None
        ident = self.tunnel.local_id
        if is_wildcard(ident):
            ip = ipaddress.ip_address(self.sa.local[0])
            ident = Identity(IdType.IPV4 if ip.version == 4 else IdType.IPV6, str(ip))
        try:
            t, data = identity_to_wire(ident)
        except IdentityError as e:
            raise ExchangeFailed(f"tunnel {self.tunnel.name}: local identity: {e}") from None
        cert = self.creds.cert if self.creds is not None else None
        if ident.type is IdType.DN and cert is not None:
            # A DN written in either order (RFC 4514 or strongSwan's "C=.., O=.., CN=..") names our
            # certificate: send its subject exactly as encoded there, which is what peers compare.
            try:
                if dn_equal(parse_dn(ident.value), cert.subject):
                    data = cert.subject.public_bytes()
            except IdentityError:
                pass
        self.sa.local_id = ident
        return IdPayload(t, data)

    def take_peer_id(self, payloads: Sequence[Decoded]) -> tuple[Identity, bytes]:
        d = one(payloads, IdPayload, "ID")
        p = d.payload
        assert isinstance(p, IdPayload)
        try:
            ident = _identity_from_wire(p.id_type, p.data)
        except IdentityError as e:
            raise ExchangeFailed(f"the peer's identity: {e}", NotifyType.INVALID_ID_INFORMATION) from None
        return ident, d.body

    def check_peer_id(self, ident: Identity) -> None:
        assert self.tunnel is not None
        want = self.tunnel.remote_id
        if not is_wildcard(want) and not identities_match(want, ident):
            raise ExchangeFailed(
                f"the peer identifies as {ident.type.label} {ident.value!r}, tunnel {self.tunnel.name} expects "
                f"{want.type.label} {want.value!r}",
                NotifyType.INVALID_ID_INFORMATION,
                offered=(f"remote id {want.type.label} {want}",),
                peer_offered=(self.peer_id_line(ident),),
            )
        self.sa.remote_id = ident

    def peer_id_line(self, ident: Identity) -> str:
        """The peer's identity as a mismatch event shows it (IDii from an initiator, IDir back)."""
        return f"{'IDir' if self.role is Role.INITIATOR else 'IDii'} {ident.type.label} {ident}"

    def certreq_payloads(self, method: AuthMethod | None = None) -> list[object]:
        """One CERTREQ per trusted CA, naming it by its DER subject (what strongSwan sends and
        matches its certificates against)."""
        m = method or auth_from_value(self.sa.auth_method)
        if m not in (AuthMethod.RSA, AuthMethod.ECDSA) or self.creds is None:
            return []
        return [CertReqPayload(CERT_X509_SIGNATURE, ca.subject.public_bytes()) for ca in self.creds.cas[:4]] or [
            CertReqPayload(CERT_X509_SIGNATURE)
        ]

    def take_certs(self, payloads: Sequence[Decoded]) -> None:
        for d in find(payloads, CertPayload):
            c = d.payload
            assert isinstance(c, CertPayload)
            if c.encoding == CERT_X509_SIGNATURE:
                self.peer_certs.append(c.data)

    def my_hash(self, id_b: bytes) -> bytes:
        assert self.sa.keys is not None
        f = hash_i if self.role is Role.INITIATOR else hash_r
        return f(
            self.sa.prf_name, self.sa.keys.skeyid, self.gxi, self.gxr, self.sa.cky_i, self.sa.cky_r, self.sai_b, id_b
        )

    def peer_hash(self, id_b: bytes) -> bytes:
        assert self.sa.keys is not None
        f = hash_r if self.role is Role.INITIATOR else hash_i
        return f(
            self.sa.prf_name, self.sa.keys.skeyid, self.gxi, self.gxr, self.sa.cky_i, self.sa.cky_r, self.sai_b, id_b
        )

    def auth_payloads(self, id_b: bytes) -> list[object]:
        digest = self.my_hash(id_b)
        if auth_from_value(self.sa.auth_method) is AuthMethod.PSK:
            return [HashPayload(digest)]
        assert self.creds is not None
        try:
            sig = self.creds.sign(self.sa.auth_method, digest)
        except (AuthFailure, ValueError) as e:
            raise ExchangeFailed(f"cannot sign: {e}") from None
        return [CertPayload(CERT_X509_SIGNATURE, self.creds.cert_der()), SigPayload(sig)]

    def verify_auth(self, payloads: Sequence[Decoded], ident: Identity, id_b: bytes, now: float) -> None:
        expected = self.peer_hash(id_b)
        if auth_from_value(self.sa.auth_method) is AuthMethod.PSK:
            h = find(payloads, HashPayload)
            if len(h) != 1:
                raise ExchangeFailed("the peer sent no HASH payload", NotifyType.PAYLOAD_MALFORMED)
            assert isinstance(h[0].payload, HashPayload)
            if not hmac.compare_digest(h[0].payload.data, expected):
                raise ExchangeFailed(
                    f"the peer's {'HASH_R' if self.role is Role.INITIATOR else 'HASH_I'} does not verify: "
                    "the pre-shared keys differ",
                    NotifyType.INVALID_HASH_INFORMATION,
                )
            return
        assert self.creds is not None
        sigs = find(payloads, SigPayload)
        if len(sigs) != 1:
            raise ExchangeFailed("the peer sent no SIG payload", NotifyType.PAYLOAD_MALFORMED)
        self.take_certs(payloads)
        # Certificate dates need calendar time; `now` is the daemon's monotonic clock.
        clock = self.ctx.settings.extra.get("wall_clock")
        wall = clock() if callable(clock) else time.time()
        try:
            cert = verify_peer_certificate(self.creds, self.peer_certs, ident, float(wall))
            assert isinstance(sigs[0].payload, SigPayload)
            verify_signature(cert, self.sa.auth_method, sigs[0].payload.data, expected)
        except AuthFailure as e:
            raise ExchangeFailed(str(e), NotifyType.AUTHENTICATION_FAILED) from None

    def initial_contact_payloads(self) -> list[object]:
        if self.ctx.initial_contact:
            return [NotifyPayload(PROTO_ISAKMP, NotifyType.INITIAL_CONTACT, self.sa.cookies)]
        return []

    # --- helpers for subclasses -------------------------------------------------------------------

    def open(self, dg: Datagram, h: Header, keys_may_differ: bool) -> list[Decoded]:
        try:
            payloads = self.sa.open(dg.data, h)
            self.opened = dg.data
            return payloads
        except (DecodeError, CryptoError) as e:
            if keys_may_differ and auth_from_value(self.sa.auth_method) is AuthMethod.PSK:
                raise ExchangeFailed(
                    f"cannot decrypt the peer's message ({e}): the pre-shared keys differ",
                    NotifyType.INVALID_HASH_INFORMATION,
                ) from None
            raise Drop(f"malformed message: {e}") from None
