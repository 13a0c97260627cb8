"""Aggressive Mode (RFC 2409 §5), both roles.

    Initiator                                          Responder
    AM1  HDR, SA, KE, Ni, IDii, [CR], VID        -->
                                                 <--  AM2  HDR, SA, KE, Nr, IDir, [CERT], HASH_R|SIG_R,
                                                           [CR], VID, NAT-D, [N(RESPONDER-LIFETIME)]
    AM3  HDR, [CERT], HASH_I|SIG_I, NAT-D, [N(INITIAL-CONTACT)]   (port 4500 if NAT)

The key exchange goes out before the group is agreed, so the initiator offers only the proposals
with the group of its first one. The responder finds its definition by the identity in AM1. AM3 goes
in the clear as RFC 2409 §5.4 draws it (and strongSwan sends it); an encrypted AM3 is accepted too.
"""

from __future__ import annotations

import enum

from ike.proto.api import Datagram, Role
from ike.proto.crypto import DhPrivate
from ike.proto.identity import identities_match
from ike.proto.v1.exchanges.errors import ExchangeFailed
from ike.proto.v1.exchanges.phase1 import Phase1Exchange, new_nonce, one
from ike.proto.v1.payloads import Exchange, NotifyType, SaPayload
from ike.proto.v1.payloads.header import Header


class AmState(enum.Enum):
    # Looked up in the state tables for every message: members are singletons compared by identity,
    # so the identity hash (C) does what Enum's hash of the name (Python code) does.
    __hash__ = object.__hash__

    INIT = "init"
    I_SENT_1 = "sent AM1"
    R_SENT_2 = "sent AM2"
    ESTABLISHED = "established"


INBOUND: dict[tuple[Role, AmState], tuple[str, AmState]] = {
    (Role.INITIATOR, AmState.I_SENT_1): ("process_am2", AmState.ESTABLISHED),
    (Role.RESPONDER, AmState.INIT): ("process_am1", AmState.R_SENT_2),
    (Role.RESPONDER, AmState.R_SENT_2): ("process_am3", AmState.ESTABLISHED),
}
AWAITING_REPLY = frozenset({AmState.I_SENT_1, AmState.R_SENT_2})


class AggressiveMode(Phase1Exchange):
    EXCHANGE = Exchange.AGGRESSIVE
    mode_name = "aggressive mode"
    INBOUND = INBOUND
    AWAITING_REPLY = AWAITING_REPLY
    ESTABLISHED = AmState.ESTABLISHED
    ENCRYPT_AM3 = False
    state = AmState.INIT

    def start(self) -> bytes:
        assert self.tunnel is not None
        group = self.tunnel.policy.proposals[0].dh
        sa = self.offer(only_group=group)
        self.dh = DhPrivate(group)
        self.gxi, self.ni = self.dh.public, new_nonce()
        idp = self.id_payload()
        self.idii_b = idp.body()
        certreq = self.certreq_payloads(self.tunnel.policy.auth)
        self.state = AmState.I_SENT_1
        return self.sa.seal(
            Exchange.AGGRESSIVE,
            0,
            [sa, *self.ke_nonce_payloads(self.gxi, self.ni), idp, *certreq, *self.vendor_payloads()],
            encrypt=False,
        )

    # --- responder --------------------------------------------------------------------------------

    def process_am1(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        sa_d = one(payloads, SaPayload, "SA")
        self.take_vids(payloads)
        ident, id_b = self.take_peer_id(payloads)
        self.idii_b = id_b
        cands = []
        t = self.ctx.policies.phase1_by_identity(dg.local[0], dg.remote[0], ident)
        if t is not None and t.policy.version == 1 and t.policy.mode == "aggressive":
            cands.append(t)
        else:
            cands = [
                c
                for c in self.ctx.policies.phase1_by_address(dg.local[0], dg.remote[0])
                if c.policy.version == 1 and c.policy.mode == "aggressive" and identities_match(c.remote_id, ident)
            ]
        if not cands:
            by_address = self.ctx.policies.phase1_by_address(dg.local[0], dg.remote[0])
            raise ExchangeFailed(
                f"no IKEv1 aggressive mode tunnel is defined for peer identity {ident.type.label} {ident.value!r} "
                f"at {dg.remote[0]}",
                NotifyType.INVALID_ID_INFORMATION,
                offered=tuple(
                    f"{c.name}: remote id {c.remote_id.type.label} {c.remote_id}"
                    for c in by_address
                    if c.policy.version == 1 and c.policy.mode == "aggressive"
                ),
                peer_offered=(self.peer_id_line(ident),),
            )
        reply_sa = self.choose(sa_d, cands)
        self.check_peer_id(ident)
        self.gxi, self.ni = self.take_ke_nonce(payloads)
        self.nr = new_nonce()
        self.gxr = self.make_dh()
        self.derive_keys()
        idp = self.id_payload()
        out: list[object] = [
            reply_sa,
            *self.ke_nonce_payloads(self.gxr, self.nr),
            idp,
            *self.auth_payloads(idp.body()),
            *self.certreq_payloads(),
            *self.vendor_payloads(),
            *self.natd_payloads(),
        ]
        if self.send_responder_lifetime:
            out.append(self.responder_lifetime_notify())
        return self.sa.seal(Exchange.AGGRESSIVE, 0, out, encrypt=False)

    def process_am3(self, dg: Datagram, h: Header, now: float) -> None:
        payloads = self.open(dg, h, keys_may_differ=True)
        assert self.sa.remote_id is not None
        self.verify_auth(payloads, self.sa.remote_id, self.idii_b, now)
        self.check_natd(payloads, dg)
        self.process_status_notifies(payloads)
        self.sa.accept(dg.data, h)
        self.follow_peer(dg)
        return None

    # --- initiator --------------------------------------------------------------------------------

    def process_am2(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        self.accept_choice(one(payloads, SaPayload, "SA"))
        assert self.sa.proposal is not None and self.dh is not None
        if self.sa.proposal.dh != self.dh.group:
            raise ExchangeFailed(
                "the responder chose a different DH group than our key exchange", NotifyType.NO_PROPOSAL_CHOSEN
            )
        self.take_vids(payloads)
        self.gxr, self.nr = self.take_ke_nonce(payloads)
        ident, id_b = self.take_peer_id(payloads)
        self.check_peer_id(ident)
        self.derive_keys()
        self.verify_auth(payloads, ident, id_b, now)
        self.check_natd(payloads, dg)
        self.process_status_notifies(payloads)
        self.float_ports()
        out: list[object] = [*self.auth_payloads(self.idii_b), *self.natd_payloads(), *self.initial_contact_payloads()]
        return self.sa.seal(Exchange.AGGRESSIVE, 0, out, encrypt=self.ENCRYPT_AM3)
