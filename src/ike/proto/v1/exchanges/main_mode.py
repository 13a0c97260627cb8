"""Main Mode (RFC 2409 §5, identity protection), both roles.

    Initiator                              Responder
    MM1  HDR, SA, VID                 -->
                                      <--  MM2  HDR, SA, VID
    MM3  HDR, KE, Ni, [CR], NAT-D     -->
                                      <--  MM4  HDR, KE, Nr, [CR], NAT-D
    MM5  HDR*, IDii, [CERT], HASH_I|SIG_I, [N(INITIAL-CONTACT)]   (port 4500 if NAT)
                                      <--  MM6  HDR*, IDir, [CERT], HASH_R|SIG_R, [N(RESPONDER-LIFETIME)]

A responder picks its definition by address at MM1 (a pre-shared key must be known before the
peer's identity is), and checks the identity at MM5; with signatures the identity may re-select it.
"""

from __future__ import annotations

import enum

from ike.policy import AuthMethod, Identity
from ike.proto.api import Datagram, Role
from ike.proto.v1.exchanges.phase1 import Phase1Exchange, find, new_nonce, one
from ike.proto.v1.payloads import Exchange, SaPayload
from ike.proto.v1.payloads.header import Header
from ike.proto.v1.proposals import auth_from_value


class MmState(enum.Enum):
    # Looked up in the state tables for every message: members are singletons compared by identity,
    # so the identity hash (C) does what Enum's hash of the name (Python code) does.
    __hash__ = object.__hash__

    INIT = "init"
    I_SENT_SA = "sent MM1"
    I_SENT_KE = "sent MM3"
    I_SENT_AUTH = "sent MM5"
    R_SENT_SA = "sent MM2"
    R_SENT_KE = "sent MM4"
    ESTABLISHED = "established"


INBOUND: dict[tuple[Role, MmState], tuple[str, MmState]] = {
    (Role.INITIATOR, MmState.I_SENT_SA): ("process_mm2", MmState.I_SENT_KE),
    (Role.INITIATOR, MmState.I_SENT_KE): ("process_mm4", MmState.I_SENT_AUTH),
    (Role.INITIATOR, MmState.I_SENT_AUTH): ("process_mm6", MmState.ESTABLISHED),
    (Role.RESPONDER, MmState.INIT): ("process_mm1", MmState.R_SENT_SA),
    (Role.RESPONDER, MmState.R_SENT_SA): ("process_mm3", MmState.R_SENT_KE),
    (Role.RESPONDER, MmState.R_SENT_KE): ("process_mm5", MmState.ESTABLISHED),
}
AWAITING_REPLY = frozenset(
    {MmState.I_SENT_SA, MmState.I_SENT_KE, MmState.I_SENT_AUTH, MmState.R_SENT_SA, MmState.R_SENT_KE}
)


class MainMode(Phase1Exchange):
    EXCHANGE = Exchange.MAIN
    mode_name = "main mode"
    INBOUND = INBOUND
    AWAITING_REPLY = AWAITING_REPLY
    ESTABLISHED = MmState.ESTABLISHED
    state = MmState.INIT

    def start(self) -> bytes:
        """Initiator: MM1."""
        sa = self.offer()
        self.state = MmState.I_SENT_SA
        return self.sa.seal(Exchange.MAIN, 0, [sa, *self.vendor_payloads()], encrypt=False)

    # --- responder --------------------------------------------------------------------------------

    def process_mm1(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        sa_d = one(payloads, SaPayload, "SA")
        self.take_vids(payloads)
        cands = [
            t
            for t in self.ctx.policies.phase1_by_address(dg.local[0], dg.remote[0])
            if t.policy.version == 1 and t.policy.mode == "main"
        ]
        self.candidates = cands
        reply = self.choose(sa_d, cands)
        return self.sa.seal(Exchange.MAIN, 0, [reply, *self.vendor_payloads()], encrypt=False)

    def process_mm3(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        self.gxi, self.ni = self.take_ke_nonce(payloads)
        self.check_natd(payloads, dg)
        self.nr = new_nonce()
        self.gxr = self.make_dh()
        self.derive_keys()
        return self.sa.seal(
            Exchange.MAIN,
            0,
            [*self.ke_nonce_payloads(self.gxr, self.nr), *self.certreq_payloads(), *self.natd_payloads()],
            encrypt=False,
        )

    def process_mm5(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=True)
        ident, id_b = self.take_peer_id(payloads)
        self._reselect_by_identity(dg, ident)
        self.check_peer_id(ident)
        self.verify_auth(payloads, ident, id_b, now)
        self.process_status_notifies(payloads)
        self.sa.accept(dg.data, h)
        self.follow_peer(dg)
        idp = self.id_payload()
        out: list[object] = [idp, *self.auth_payloads(idp.body())]
        if self.send_responder_lifetime:
            out.append(self.responder_lifetime_notify())
        return self.sa.seal(Exchange.MAIN, 0, out, encrypt=True)

    def _reselect_by_identity(self, dg: Datagram, ident: object) -> None:
        """With signatures the identity, not the address, names the definition (same proposal)."""
        assert isinstance(ident, Identity) and self.tunnel is not None
        if auth_from_value(self.sa.auth_method) is AuthMethod.PSK:
            return
        t = self.ctx.policies.phase1_by_identity(dg.local[0], dg.remote[0], ident)
        if t is None or t == self.tunnel:
            return
        if (
            t.policy.version == 1
            and t.policy.auth is self.tunnel.policy.auth
            and self.sa.proposal in t.policy.proposals
        ):
            self.tunnel = t
            self.sa.phase1 = t
            self._load_creds(t)

    # --- initiator --------------------------------------------------------------------------------

    def process_mm2(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        self.process_status_notifies(payloads)
        self.accept_choice(one(payloads, SaPayload, "SA"))
        self.take_vids(payloads)
        self.ni = new_nonce()
        self.gxi = self.make_dh()
        return self.sa.seal(
            Exchange.MAIN,
            0,
            [*self.ke_nonce_payloads(self.gxi, self.ni), *self.certreq_payloads(), *self.natd_payloads()],
            encrypt=False,
        )

    def process_mm4(self, dg: Datagram, h: Header, now: float) -> bytes:
        payloads = self.open(dg, h, keys_may_differ=False)
        self.gxr, self.nr = self.take_ke_nonce(payloads)
        self.check_natd(payloads, dg)
        self.derive_keys()
        self.float_ports()
        idp = self.id_payload()
        out: list[object] = [idp, *self.auth_payloads(idp.body()), *self.initial_contact_payloads()]
        return self.sa.seal(Exchange.MAIN, 0, out, encrypt=True)

    def process_mm6(self, dg: Datagram, h: Header, now: float) -> None:
        payloads = self.open(dg, h, keys_may_differ=True)
        ident, id_b = self.take_peer_id(payloads)
        self.check_peer_id(ident)
        self.verify_auth(payloads, ident, id_b, now)
        self.process_status_notifies(payloads)
        self.sa.accept(dg.data, h)
        return None


__all__ = ["INBOUND", "MainMode", "MmState", "find"]
