"""Quick Mode (RFC 2409 §5.5), both roles, under an established ISAKMP SA.

    Initiator                                              Responder
    QM1  HDR*, HASH(1), SA, Ni, [KE], IDci, IDcr      -->
                                                      <--  QM2  HDR*, HASH(2), SA, Nr, [KE], IDci, IDcr,
                                                                [N(RESPONDER-LIFETIME)]
    QM3  HDR*, HASH(3)                                -->

HASH(1) = prf(SKEYID_a, M-ID | rest of QM1), HASH(2) = prf(SKEYID_a, M-ID | Ni_b | rest of QM2),
HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b). Under NAT the encapsulation mode is UDP-Encapsulated
tunnel/transport (3/4, or 61443/61444 with draft NAT-T peers). A responder narrows the peer's
selectors to its definition's and answers with the narrowed IDs. The commit bit is accepted and
not required (the SA is usable once QM3 is through, as with strongSwan).
"""

from __future__ import annotations

import enum
import hmac
import os
from dataclasses import dataclass

from ike.policy import EspProposal, Phase2Tunnel, TrafficSelector
from ike.proto.api import ChildSaKeys, Datagram, PolicySource, Role
from ike.proto.crypto import CryptoError, DhPrivate
from ike.proto.transforms import DH
from ike.proto.v1 import natt
from ike.proto.v1.exchanges.errors import Drop, ExchangeFailed
from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.keys import keymat
from ike.proto.v1.payloads import (
    Attr,
    DecodeError,
    Exchange,
    HashPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    SaPayload,
)
from ike.proto.v1.payloads.attributes import decode_attrs
from ike.proto.v1.payloads.chain import Decoded
from ike.proto.v1.payloads.header import Header
from ike.proto.v1.payloads.id import id_to_selector, selector_to_id
from ike.proto.v1.payloads.sa import PROTO_AH, PROTO_ESP, Proposal
from ike.proto.v1.proposals import (
    ENCAP_MODES,
    ENCAP_TRANSPORT,
    ENCAP_TUNNEL,
    ENCAP_UDP_TRANSPORT,
    ENCAP_UDP_TRANSPORT_DRAFT,
    ENCAP_UDP_TUNNEL,
    ENCAP_UDP_TUNNEL_DRAFT,
    LIFE_KB,
    LIFE_SECONDS,
    P2_LIFE_DURATION,
    P2_LIFE_TYPE,
    Phase2Choice,
    choose_phase2,
    key_lengths,
    phase2_lines,
    phase2_sa,
    phase2_transform,
)

DEFAULT_P2_LIFETIME = 28800  # RFC 2407 §4.5


class QmState(enum.Enum):
    # Looked up in the state tables for every message: members are singletons compared by identity,
    # so the identity hash (C) does what Enum's hash of the name (Python code) does.
    __hash__ = object.__hash__

    INIT = "init"
    I_SENT_1 = "sent QM1"
    R_SENT_2 = "sent QM2"
    DONE = "done"


INBOUND: dict[tuple[Role, QmState], tuple[str, QmState]] = {
    (Role.INITIATOR, QmState.I_SENT_1): ("process_qm2", QmState.DONE),
    (Role.RESPONDER, QmState.INIT): ("process_qm1", QmState.R_SENT_2),
    (Role.RESPONDER, QmState.R_SENT_2): ("process_qm3", QmState.DONE),
}
AWAITING_REPLY = {QmState.I_SENT_1, QmState.R_SENT_2}


@dataclass(frozen=True)
class ChildResult:
    phase2: Phase2Tunnel
    role: Role
    protocol: str
    mode: str
    proposal: EspProposal
    inbound: ChildSaKeys
    outbound: ChildSaKeys
    local_ts: TrafficSelector
    remote_ts: TrafficSelector
    udp_encap: bool
    lifetime_s: int
    lifetime_kb: int
    pfs_group: int
    rekey_of: int | None


_NOTHING_YET = (b"", Header(b"", b"", 0, 0, 0, 0))  # QuickMode._incoming before a message (one for all)


def new_spi() -> bytes:
    while True:
        spi = os.urandom(4)
        if int.from_bytes(spi, "big") >= 256:  # 1-255 are reserved (RFC 4303 §2.1)
            return spi


def _prop_name(protocol: int) -> str:
    return "ah" if protocol == PROTO_AH else "esp"


class QuickMode:
    def __init__(
        self, sa: IsakmpSa, role: Role, msgid: int, policies: PolicySource,
        phase2: Phase2Tunnel | None = None, rekey_of: int | None = None,
    ) -> None:  # fmt: skip
        self.sa = sa
        self.role = role
        self.msgid = msgid
        self.policies = policies
        self.phase2 = phase2
        self.rekey_of = rekey_of
        self.state = QmState.INIT
        self.our_spi = new_spi()
        self.ni = self.nr = b""
        self.dh: DhPrivate | None = None
        self.peer_ke = b""
        self.local_ts: TrafficSelector | None = None
        self.remote_ts: TrafficSelector | None = None
        self.choice: Phase2Choice | None = None
        self.lifetime_s = 0
        self.lifetime_kb = 0
        self.result: ChildResult | None = None
        self.protocol = PROTO_ESP
        self.commit = False
        self._incoming: tuple[bytes, Header] = _NOTHING_YET

    @property
    def awaiting_reply(self) -> bool:
        return self.state in AWAITING_REPLY

    @property
    def done(self) -> bool:
        return self.state is QmState.DONE

    def _encap(self, mode: str) -> int:
        if natt_used(self.sa):
            if self.sa.natt == natt.NATT_RFC:
                return ENCAP_UDP_TUNNEL if mode == "tunnel" else ENCAP_UDP_TRANSPORT
            return ENCAP_UDP_TUNNEL_DRAFT if mode == "tunnel" else ENCAP_UDP_TRANSPORT_DRAFT
        return ENCAP_TUNNEL if mode == "tunnel" else ENCAP_TRANSPORT

    def offered_lines(self, p2: Phase2Tunnel) -> tuple[str, ...]:
        pol = p2.policy
        return tuple(
            f"{p2.name}: {pol.protocol} {p} {pol.mode}{f' pfs dh{pol.pfs_group}' if pol.pfs_group else ''} "
            f"life {pol.lifetime_s}s; {p2.local_ts} <-> {p2.remote_ts}"
            for p in pol.proposals
        )

    def _nat_oa(self, mode: str) -> list[object]:
        """RFC 3947 §5.2: transport mode behind a NAT names the original addresses (NAT-OAi, NAT-OAr)
        so that the peer can fix TCP/UDP checksums."""
        if mode != "transport" or not natt_used(self.sa):
            return []
        from ike.proto.v1.payloads.id import nat_oa

        draft = self.sa.natt == natt.NATT_DRAFT
        if self.role is Role.INITIATOR:
            return [nat_oa(self.sa.local[0], draft), nat_oa(self.sa.remote[0], draft)]
        return [nat_oa(self.sa.remote[0], draft), nat_oa(self.sa.local[0], draft)]

    # --- initiator --------------------------------------------------------------------------------

    def start(self) -> bytes:
        p2 = self.phase2
        assert p2 is not None
        pol = p2.policy
        self.protocol = PROTO_AH if pol.protocol == "ah" else PROTO_ESP
        self.ni = os.urandom(32)
        try:
            sa = phase2_sa(self.protocol, self.our_spi, pol.proposals, self._encap(pol.mode), pol.pfs_group,
                           pol.lifetime_s, pol.lifetime_kb)  # fmt: skip
            idci, idcr = selector_to_id(p2.local_ts), selector_to_id(p2.remote_ts)
            if pol.pfs_group:
                self.dh = DhPrivate(pol.pfs_group)
        except ValueError as e:
            raise ExchangeFailed(f"phase 2 tunnel {p2.name}: {e}") from None
        self.local_ts, self.remote_ts = p2.local_ts, p2.remote_ts
        payloads: list[object] = [sa, NoncePayload(self.ni)]
        if self.dh is not None:
            payloads.append(KePayload(self.dh.public))
        payloads += [idci, idcr, *self._nat_oa(pol.mode)]
        self.state = QmState.I_SENT_1
        return self.sa.protected(Exchange.QUICK, self.msgid, payloads)

    def receive(self, dg: Datagram, h: Header, now: float) -> bytes | None:
        step = INBOUND.get((self.role, self.state))
        if step is None:
            raise Drop(f"quick mode message in state {self.state.value}")
        name, after = step
        try:
            payloads = self.sa.open(dg.data, h)
        except (DecodeError, CryptoError) as e:
            raise Drop(f"malformed quick mode message: {e}") from None
        self._incoming = (dg.data, h)
        out: bytes | None = getattr(self, name)(payloads, h)
        self.state = after
        return out

    def _check_hash(self, payloads: list[Decoded], prefix: bytes) -> list[Decoded]:
        if not payloads or not isinstance(payloads[0].payload, HashPayload):
            raise Drop("quick mode message does not start with a HASH payload")
        rest = payloads[1:]
        want = self.sa.hash_of(self.msgid.to_bytes(4, "big") + prefix + b"".join(d.raw for d in rest))
        if not hmac.compare_digest(payloads[0].payload.data, want):
            raise Drop("quick mode HASH does not verify")
        self.sa.accept(*self._incoming)  # the IV chain moves on only for authentic messages
        return rest

    def process_qm2(self, payloads: list[Decoded], h: Header) -> bytes:
        assert self.phase2 is not None
        rest = self._check_hash(payloads, self.ni)
        pol = self.phase2.policy
        sas = [d.payload for d in rest if isinstance(d.payload, SaPayload)]
        nonces = [d.payload for d in rest if isinstance(d.payload, NoncePayload)]
        if len(sas) != 1 or len(nonces) != 1:
            raise Drop("QM2 needs one SA and one nonce payload")
        sa = sas[0]
        if len(sa.proposals) != 1 or len(sa.proposals[0].transforms) != 1:
            raise ExchangeFailed("the responder's quick mode SA must carry exactly one transform",
                                 NotifyType.BAD_PROPOSAL_SYNTAX)  # fmt: skip
        choice, why = choose_phase2(pol.proposals, self.protocol, pol.pfs_group, sa)
        if choice is None:
            raise ExchangeFailed(
                f"the responder chose a phase 2 transform we did not offer ({why})",
                NotifyType.NO_PROPOSAL_CHOSEN,
                offered=self.offered_lines(self.phase2),
                peer_offered=tuple(phase2_lines(sa)),
            )
        self.choice = choice
        self.nr = nonces[0].data
        self._take_ke(rest, pol.pfs_group)
        ids = [d.payload for d in rest if isinstance(d.payload, IdPayload)]
        if len(ids) == 2:
            try:
                li, ri = id_to_selector(ids[0]), id_to_selector(ids[1])
            except DecodeError as e:
                raise ExchangeFailed(
                    f"the responder's quick mode IDs: {e}", NotifyType.INVALID_ID_INFORMATION
                ) from None
            assert self.local_ts is not None and self.remote_ts is not None
            if not (self.local_ts.contains(li) and self.remote_ts.contains(ri)):
                raise ExchangeFailed(
                    f"the responder answered with selectors {li} <-> {ri} outside the proposed "
                    f"{self.local_ts} <-> {self.remote_ts}",
                    NotifyType.INVALID_ID_INFORMATION,
                )
            self.local_ts, self.remote_ts = li, ri
        elif ids:
            raise Drop("QM2 carries one ID payload; IDs come in pairs")
        self.lifetime_s = min(choice.lifetime_s or pol.lifetime_s, pol.lifetime_s)
        kbs = [x for x in (choice.lifetime_kb, pol.lifetime_kb) if x]
        self.lifetime_kb = min(kbs) if kbs else 0
        self._responder_lifetime(rest)
        self.commit = bool(h.flags & 2)
        self._finish()
        hash3 = self.sa.hash_of(b"\x00" + self.msgid.to_bytes(4, "big") + self.ni + self.nr)
        return self.sa.seal(Exchange.QUICK, self.msgid, [HashPayload(hash3)], encrypt=True)

    def _responder_lifetime(self, rest: list[Decoded]) -> None:
        for d in rest:
            n = d.payload
            if not isinstance(n, NotifyPayload):
                continue
            if n.notify_type != NotifyType.RESPONDER_LIFETIME:
                continue
            try:
                attrs = decode_attrs(n.data)
                kind = None
                for a in attrs:
                    if a.type == P2_LIFE_TYPE:
                        kind = a.as_int()
                    elif a.type == P2_LIFE_DURATION and a.as_int() > 0:
                        if kind == LIFE_SECONDS:
                            self.lifetime_s = min(self.lifetime_s, a.as_int())
                        elif kind == LIFE_KB:
                            self.lifetime_kb = min(self.lifetime_kb or a.as_int(), a.as_int())
            except DecodeError:
                continue

    def _take_ke(self, rest: list[Decoded], group: int) -> None:
        kes = [d.payload for d in rest if isinstance(d.payload, KePayload)]
        if group:
            if len(kes) != 1:
                raise ExchangeFailed(f"PFS with DH group {group} but the peer sent no KE payload",
                                     NotifyType.NO_PROPOSAL_CHOSEN)  # fmt: skip
            if len(kes[0].data) != DH[group].public_len:
                raise ExchangeFailed(
                    f"the peer's PFS DH value is {len(kes[0].data)} bytes, group {group} needs {DH[group].public_len}",
                    NotifyType.INVALID_KEY_INFORMATION,
                )
            self.peer_ke = kes[0].data
        elif kes:
            raise ExchangeFailed(
                "the peer sent a KE payload but no PFS group was agreed", NotifyType.NO_PROPOSAL_CHOSEN
            )

    def _finish(self) -> None:
        """KEYMAT for both directions (RFC 2409 §5.5): each SA's key uses the SPI its receiver chose."""
        c = self.choice
        assert c is not None and self.sa.keys is not None and self.phase2 is not None
        assert self.local_ts is not None and self.remote_ts is not None
        gxy = b""
        if self.dh is not None:
            try:
                gxy = self.dh.shared(self.peer_ke)
            except CryptoError as e:
                raise ExchangeFailed(str(e), NotifyType.INVALID_KEY_INFORMATION) from None
        enc_len, integ_len = key_lengths(c.protocol, c.proposal)
        total = enc_len + integ_len
        ni, nr = self.ni, self.nr
        d = self.sa.keys.d

        def keys(spi: bytes) -> ChildSaKeys:
            km = keymat(self.sa.prf_name, d, c.protocol, spi, ni, nr, total, gxy)
            return ChildSaKeys(spi, km[:enc_len], km[enc_len:])

        mode, udp = ENCAP_MODES[c.encap]
        self.result = ChildResult(
            phase2=self.phase2,
            role=self.role,
            protocol=_prop_name(c.protocol),
            mode=mode,
            proposal=c.proposal,
            inbound=keys(self.our_spi),
            outbound=keys(c.peer_spi),
            local_ts=self.local_ts,
            remote_ts=self.remote_ts,
            udp_encap=udp,
            lifetime_s=self.lifetime_s,
            lifetime_kb=self.lifetime_kb,
            pfs_group=c.group,
            rekey_of=self.rekey_of,
        )

    # --- responder --------------------------------------------------------------------------------

    def process_qm1(self, payloads: list[Decoded], h: Header) -> bytes:
        rest = self._check_hash(payloads, b"")
        sas: list[SaPayload] = []
        nonces: list[NoncePayload] = []
        ids: list[IdPayload] = []
        for d in rest:  # one pass, sorting by payload type
            x = d.payload
            if isinstance(x, SaPayload):
                sas.append(x)
            elif isinstance(x, NoncePayload):
                nonces.append(x)
            elif isinstance(x, IdPayload):
                ids.append(x)
        if len(sas) != 1 or len(nonces) != 1:
            raise Drop("QM1 needs one SA and one nonce payload")
        self.ni = nonces[0].data
        try:
            if len(ids) == 2:
                idci, idcr = id_to_selector(ids[0]), id_to_selector(ids[1])
            elif not ids:
                idci = TrafficSelector.host(self.sa.remote[0])
                idcr = TrafficSelector.host(self.sa.local[0])
            else:
                raise Drop("QM1 carries one ID payload; IDs come in pairs")
        except DecodeError as e:
            raise ExchangeFailed(f"the peer's quick mode IDs: {e}", NotifyType.INVALID_ID_INFORMATION) from None
        assert self.sa.phase1 is not None
        p2 = self.policies.phase2_for(self.sa.phase1, [idcr], [idci])
        if p2 is None:
            # Both sides as "ours <-> theirs", as for a definition that does not overlap (below).
            defs = self.policies.phase2_definitions(self.sa.phase1)
            raise ExchangeFailed(
                f"no phase 2 tunnel under {self.sa.phase1.name} covers the peer's selectors "
                f"{idci} (theirs) <-> {idcr} (ours)",
                NotifyType.INVALID_ID_INFORMATION,
                offered=tuple(f"{d.name}: {d.local_ts} <-> {d.remote_ts}" for d in defs),
                peer_offered=(f"{idcr} <-> {idci}",),
            )
        self.phase2 = p2
        # What a definition equal to the proposal narrows it to is the proposal itself.
        local = idcr if p2.local_ts == idcr else p2.local_ts.intersect(idcr)
        remote = idci if p2.remote_ts == idci else p2.remote_ts.intersect(idci)
        if local is None or remote is None:
            raise ExchangeFailed(
                f"phase 2 tunnel {p2.name} ({p2.local_ts} <-> {p2.remote_ts}) does not overlap the peer's "
                f"selectors {idcr} <-> {idci}",
                NotifyType.INVALID_ID_INFORMATION,
                offered=(f"{p2.local_ts} <-> {p2.remote_ts}",),
                peer_offered=(f"{idcr} <-> {idci}",),
            )
        self.local_ts, self.remote_ts = local, remote
        pol = p2.policy
        self.protocol = PROTO_AH if pol.protocol == "ah" else PROTO_ESP
        choice, why = choose_phase2(pol.proposals, self.protocol, pol.pfs_group, sas[0])
        if choice is not None and ENCAP_MODES[choice.encap][0] != pol.mode:
            why = f"the peer wants {ENCAP_MODES[choice.encap][0]} mode, tunnel {p2.name} is {pol.mode} mode"
            choice = None
        if choice is None:
            raise ExchangeFailed(
                f"no phase 2 proposal matches ({why})",
                NotifyType.NO_PROPOSAL_CHOSEN,
                offered=self.offered_lines(p2),
                peer_offered=tuple(phase2_lines(sas[0])),
            )
        self.choice = choice
        self._take_ke(rest, pol.pfs_group)
        if pol.pfs_group:
            self.dh = DhPrivate(pol.pfs_group)
        peer_s = choice.lifetime_s or DEFAULT_P2_LIFETIME
        self.lifetime_s = min(peer_s, pol.lifetime_s)
        kbs = [x for x in (choice.lifetime_kb, pol.lifetime_kb) if x]
        self.lifetime_kb = min(kbs) if kbs else 0
        shorter = pol.lifetime_s < peer_s or (
            bool(pol.lifetime_kb) and self.lifetime_kb < (choice.lifetime_kb or 1 << 62)
        )
        self.commit = bool(h.flags & 2)
        self.nr = os.urandom(32)
        reply_t = phase2_transform(
            choice.transform.number, self.protocol, choice.proposal, choice.encap, choice.group,
            self.lifetime_s, self.lifetime_kb,
        )  # fmt: skip
        out: list[object] = [SaPayload((Proposal(choice.number, self.protocol, self.our_spi, (reply_t,)),)),
                             NoncePayload(self.nr)]  # fmt: skip
        if self.dh is not None:
            out.append(KePayload(self.dh.public))
        if ids:
            out += [selector_to_id(remote), selector_to_id(local)]
        out += self._nat_oa(pol.mode)
        if shorter:
            attrs = [Attr(P2_LIFE_TYPE, LIFE_SECONDS), Attr(P2_LIFE_DURATION, self.lifetime_s)]
            if self.lifetime_kb:
                attrs += [Attr(P2_LIFE_TYPE, LIFE_KB), Attr(P2_LIFE_DURATION, self.lifetime_kb)]
            out.append(NotifyPayload(self.protocol, NotifyType.RESPONDER_LIFETIME, choice.peer_spi,
                                     b"".join(a.encode() for a in attrs)))  # fmt: skip
        self._finish()
        return self.sa.protected(Exchange.QUICK, self.msgid, out, prefix=self.ni)

    def process_qm3(self, payloads: list[Decoded], h: Header) -> None:
        if len(payloads) < 1 or not isinstance(payloads[0].payload, HashPayload):
            raise Drop("QM3 does not start with a HASH payload")
        want = self.sa.hash_of(b"\x00" + self.msgid.to_bytes(4, "big") + self.ni + self.nr)
        if not hmac.compare_digest(payloads[0].payload.data, want):
            raise Drop("QM3 HASH(3) does not verify")
        self.sa.accept(*self._incoming)
        return None


def natt_used(sa: IsakmpSa) -> bool:
    return bool(sa.natt) and (sa.nat_local or sa.nat_remote)
