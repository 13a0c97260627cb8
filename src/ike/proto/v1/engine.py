"""`Ikev1Engine`: one IKEv1 association with one peer, sans-IO (the Engine protocol of proto/api.py).

It owns the ISAKMP SAs with that peer (the current one and, during a rekey, its successor), the
phase 2 SAs negotiated under them, and the exchanges in flight. Exchanges are in exchanges/ (one
module each, with their state tables); this module routes datagrams to them, retransmits, answers
duplicates, runs the timers (rekey, expiry, DPD) and turns results into events.

Routing (for the daemon): every ISAKMP SA announces OUR cookie with `SpiAdded` (the initiator cookie
when we initiated, the responder cookie when we responded). `demux(data)` cannot tell from a header
which cookie is ours, so it returns `our_spi` = CKY-R (None when CKY-R is zero, a first main or
aggressive mode message) and `peer_spi` = CKY-I. Look up `our_spi`, then `peer_spi`, in the
SpiAdded table; a first message whose (remote address, CKY-I) is already half-open is a
retransmission for that engine; anything else with CKY-R zero goes to `Ikev1Engine.respond`.

Rules carried out here:
- Nothing raises out of a public method; bad datagrams become `PacketDropped` events.
- Retransmission: a message that waits for an answer is resent after `retransmit_timeout_s`,
  doubling, `retransmit_tries` times, as two copies back to back; then the negotiation fails. A
  datagram identical to one already answered gets the same answer again (both roles), so a lost
  last message heals; the last message of an exchange (MM6, AM3, QM3, R-U-THERE-ACK) goes out once,
  and twice back to back only when the peer's retransmission shows it was lost. A single copy can
  fall in step with a regular loss pattern (every other datagram) for ever; one of two gets through.
- An ISAKMP SA deleted after its rekey stays known until it would have expired: a peer still
  using it lost our Delete and gets it again (its DPD would otherwise take its phase 2 SAs down).
- Phase 1 is rekeyed (a new main/aggressive mode, then, `REKEYED_DELETE_DELAY_S` later or at its
  expiry if sooner, a Delete for the old SA, which meanwhile starts nothing) by the side that
  initiated it; phase 2 by the side that initiated that SA, `rekey_margin` before expiry, its old
  SA deleted the same grace period after the new one is up (so a lost QM3 leaves no gap).
- Deleting phase 1 leaves the phase 2 SAs running until they expire (AIX; RFC 2409).
- Lifetimes in kilobytes of phase 2 SAs are counted by the data plane: the daemon calls
  `rekey_child` when one runs out.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ike.policy import Phase1Tunnel, Phase2Tunnel
from ike.proto.api import (
    Address,
    ChildSaDeleted,
    ChildSaEstablished,
    Datagram,
    Demux,
    EngineSettings,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PacketDropped,
    PolicySource,
    Role,
    SpiAdded,
    SpiRemoved,
)
from ike.proto.engine_base import EngineOutput
from ike.proto.v1.exchanges import informational
from ike.proto.v1.exchanges.aggressive_mode import AggressiveMode
from ike.proto.v1.exchanges.errors import Drop, ExchangeFailed
from ike.proto.v1.exchanges.main_mode import MainMode
from ike.proto.v1.exchanges.phase1 import Phase1Context, Phase1Exchange
from ike.proto.v1.exchanges.quick_mode import QuickMode
from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.payloads import DecodeError, Exchange, Header, NotifyType
from ike.proto.v1.payloads.notify import notify_name
from ike.proto.v1.payloads.sa import PROTO_AH, PROTO_ESP, PROTO_ISAKMP

ZERO_COOKIE = bytes(8)
_RESPONSE_CACHE = 64
REKEYED_DELETE_DELAY_S = 5.0  # EngineSettings.extra["ikev1_rekeyed_delete_delay_s"] overrides
_MAX_QM_IN_FLIGHT = 32
_ERRORS = range(1, 16384)  # the error notify types (RFC 2408 §3.14.1); `in` on a range is arithmetic
# What a peer answers, protected, when it refuses what came after the key exchange (RFC 2408 §3.14.1).
_PHASE1_REFUSALS = frozenset({
    NotifyType.INVALID_KEY_INFORMATION, NotifyType.INVALID_ID_INFORMATION, NotifyType.INVALID_CERT_ENCODING,
    NotifyType.INVALID_CERTIFICATE, NotifyType.CERT_TYPE_UNSUPPORTED, NotifyType.INVALID_CERT_AUTHORITY,
    NotifyType.INVALID_HASH_INFORMATION, NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_SIGNATURE,
    NotifyType.CERTIFICATE_UNAVAILABLE,
})  # fmt: skip
_REFUSAL_HINTS: dict[int, str] = {
    NotifyType.INVALID_ID_INFORMATION: " (it does not accept our identity; check the identities both sides expect)",
    NotifyType.AUTHENTICATION_FAILED: " (it does not accept our authentication: certificate, CA or key)",
    NotifyType.INVALID_HASH_INFORMATION: " (our HASH does not verify there: the pre-shared keys differ)",
    NotifyType.INVALID_SIGNATURE: " (our signature does not verify there)",
    NotifyType.INVALID_CERTIFICATE: " (it does not accept our certificate)",
    NotifyType.INVALID_CERT_AUTHORITY: " (it does not trust the CA of our certificate)",
    NotifyType.CERTIFICATE_UNAVAILABLE: " (it has no certificate to authenticate with)",
}


def demux(data: bytes) -> Demux | None:
    """Routing keys of an IKEv1 datagram (see the module docstring); None if it is not ISAKMP v1."""
    if len(data) < 28 or data[17] >> 4 != 1:
        return None
    cky_i, cky_r = data[0:8], data[8:16]
    if cky_i == ZERO_COOKIE:
        return None
    return Demux(our_spi=None if cky_r == ZERO_COOKIE else cky_r, peer_spi=cky_i, version=1)


@dataclass
class _Flight:
    """A message of ours that waits for an answer."""

    data: bytes
    local: Address
    remote: Address
    next_at: float
    tries: int
    phase: int
    what: str


@dataclass
class _Child:
    child_id: int
    sa_id: int
    phase2: Phase2Tunnel
    role: Role
    protocol: int
    inbound_spi: bytes
    outbound_spi: bytes
    established_at: float
    rekey_at: float | None
    expire_at: float
    replaced: bool = False


@dataclass
class _SaTimers:
    rekey_at: float | None
    expire_at: float
    dpd_at: float | None
    dpd_seq: int  # the sequence number of our latest R-U-THERE
    last_heard: float
    dpd_first: int = 0  # ... and of the first one of the current round (any of them may be ACKed)
    # The peer has shown it holds the SA too. Not yet when our message ended phase 1 (MM6, AM3): the
    # peer may still refuse it, and says so with a protected notify (see `_phase1_refused`).
    confirmed: bool = True
    replaced: bool = False
    delete_at: float | None = None  # replaced by a rekey: Delete it then (see `_retire_sa`)


@dataclass
class _Answer:
    """What we answered to an accepted message, for its retransmissions."""

    data: bytes | None
    final: bool  # nothing answers it in turn (MM6, AM3, QM3, R-U-THERE-ACK)
    resent_at: float | None = None


@dataclass
class _Tomb:
    """An ISAKMP SA we deleted after its rekey, kept (keys, and the route to us) until it would
    have expired: a peer that still uses it lost our Delete, and gets it again. Left to itself,
    that peer's DPD on the stale SA would find no one answering and take its phase 2 SAs down."""

    sa: IsakmpSa
    delete: bytes
    until: float
    resends: int = 0
    resent_at: float | None = None


class Ikev1Engine(EngineOutput):
    role: Role

    def __init__(
        self, policies: PolicySource, settings: EngineSettings, local: Address, remote: Address, role: Role, now: float
    ) -> None:
        super().__init__()
        self.role = role
        self._policies = policies
        self._settings = settings
        self._local = local
        self._remote = remote
        self._phase1: Phase1Tunnel | None = None
        self._sas: dict[bytes, IsakmpSa] = {}  # by our cookie
        self._p1x: dict[bytes, Phase1Exchange] = {}  # phase 1 exchanges in progress, by our cookie
        self._timers: dict[bytes, _SaTimers] = {}  # established SAs, by our cookie
        self._tombs: dict[bytes, _Tomb] = {}  # deleted after a rekey, by our cookie
        self._qms: dict[tuple[bytes, int], QuickMode] = {}
        self._children: dict[int, _Child] = {}
        self._pending: list[tuple[Phase2Tunnel, int | None]] = []
        self._flights: dict[tuple[object, ...], _Flight] = {}
        self._answers: OrderedDict[bytes, _Answer] = OrderedDict()  # by digest of the accepted message
        self._next_sa_id = 1
        self._next_child_id = 1
        self._closing = False
        self._ever_established = False
        self._initial_contact = True
        self._now = now
        self._current_request = b""
        self._rx_digest: tuple[bytes, bytes] = (b"", b"")  # the datagram being handled, and its _digest

    # --- constructors -----------------------------------------------------------------------------

    @classmethod
    def initiate(
        cls,
        phase1: Phase1Tunnel,
        children: Sequence[Phase2Tunnel],
        policies: PolicySource,
        settings: EngineSettings,
        local: Address,
        remote: Address,
        now: float,
        initial_contact: bool = True,
    ) -> Ikev1Engine:
        """`initial_contact`: no other SA with this peer exists, so INITIAL-CONTACT goes with the
        first phase 1 (never with its renewals); the daemon knows."""
        eng = cls(policies, settings, local, remote, Role.INITIATOR, now)
        eng._initial_contact = initial_contact
        eng._phase1 = phase1
        eng._pending = [(c, None) for c in children]
        eng._guard(lambda: eng._start_phase1(now, None), remote)
        return eng

    @classmethod
    def respond(cls, dg: Datagram, policies: PolicySource, settings: EngineSettings, now: float) -> Ikev1Engine | None:
        """A responder for a first main or aggressive mode message; None for anything else."""
        try:
            h = Header.decode(dg.data)
        except DecodeError:
            return None
        if h.cky_r != ZERO_COOKIE or h.message_id != 0 or h.exchange not in (Exchange.MAIN, Exchange.AGGRESSIVE):
            return None
        if h.flags & 1 or h.next_payload != 1:  # must be plaintext and start with the SA payload
            return None
        eng = cls(policies, settings, dg.local, dg.remote, Role.RESPONDER, now)
        cky_r = eng._new_cookie()
        sa = IsakmpSa(eng._new_sa_id(), Role.RESPONDER, h.cky_i, cky_r, dg.local, dg.remote, h.exchange)
        ctx = Phase1Context(policies, settings)
        x: Phase1Exchange = (MainMode if h.exchange == Exchange.MAIN else AggressiveMode)(sa, ctx, None)
        eng._sas[cky_r] = sa
        eng._p1x[cky_r] = x
        eng.emit(SpiAdded(cky_r))
        eng._guard(lambda: eng._phase1_step(sa, x, dg, h, now), dg.remote)
        if cky_r in eng._p1x and x.state.value == "init":
            eng._abandon_phase1(cky_r)  # a malformed first message leaves nothing half-open
        return eng

    # --- Engine protocol --------------------------------------------------------------------------

    def receive_datagram(self, dg: Datagram, now: float) -> None:
        self._now = now
        self._guard(lambda: self._receive(dg, now), dg.remote)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._guard(lambda: self._on_timer(now), self._remote)

    def get_timer(self) -> float | None:
        times: list[float] = [f.next_at for f in self._flights.values()]
        for t in self._timers.values():
            times.append(t.expire_at)
            if t.rekey_at is not None:
                times.append(t.rekey_at)
            if t.dpd_at is not None:
                times.append(t.dpd_at)
            if t.delete_at is not None:
                times.append(t.delete_at)
        times += [tomb.until for tomb in self._tombs.values()]
        for c in self._children.values():
            times.append(c.expire_at)
            if c.rekey_at is not None:
                times.append(c.rekey_at)
        return min(times) if times else None

    def start_child(self, phase2: Phase2Tunnel, now: float) -> None:
        self._now = now
        self._guard(lambda: self._start_child(phase2, None, now), self._remote)

    def rekey_child(self, child_id: int, now: float) -> None:
        self._now = now
        c = self._children.get(child_id)
        if c is not None and not c.replaced:
            self._guard(lambda: self._start_child(c.phase2, child_id, now), self._remote)

    def delete_child(self, child_id: int, now: float) -> None:
        self._now = now
        self._guard(lambda: self._delete_child(child_id, "deleted locally", notify_peer=True), self._remote)

    def delete(self, now: float) -> None:
        self._now = now
        self._closing = True
        self._pending.clear()

        def run() -> None:
            for cookie in list(self._sas):
                sa = self._sas[cookie]
                if cookie in self._timers:
                    self._send_final(informational.delete_isakmp(sa), sa)
                    self._drop_sa(cookie, "deleted locally")
                else:
                    self._abandon_phase1(cookie)
            for key in [k for k in self._flights if k[0] == "qm"]:
                del self._flights[key]
            self._qms.clear()
            self._bury(None)

        self._guard(run, self._remote)

    def is_established(self) -> bool:
        return bool(self._timers)

    # --- extras for the daemon and tests ----------------------------------------------------------

    def is_finished(self) -> bool:
        """Nothing left: no SA, no phase 2 SA, nothing in flight (the daemon may forget the engine)."""
        return not self._sas and not self._children and not self._flights

    @property
    def finished(self) -> bool:
        return self.is_finished()

    @property
    def phase1(self) -> Phase1Tunnel | None:
        sa = self._current_sa()
        return sa.phase1 if sa is not None else self._phase1

    def sa_ids(self) -> list[int]:
        return [sa.sa_id for sa in self._sas.values()]

    def child_ids(self) -> list[int]:
        return sorted(self._children)

    # --- plumbing ---------------------------------------------------------------------------------

    def _guard(self, fn: object, remote: Address) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception as e:  # the contract: nothing escapes an engine
            self.emit(PacketDropped(f"internal error in the IKEv1 engine: {type(e).__name__}: {e}", remote))

    def _new_cookie(self) -> bytes:
        while True:
            c = os.urandom(8)
            if c != ZERO_COOKIE and c not in self._sas:
                return c

    def _new_sa_id(self) -> int:
        i = self._next_sa_id
        self._next_sa_id += 1
        return i

    def _send_waiting(self, key: tuple[object, ...], data: bytes, sa: IsakmpSa, phase: int, what: str,
                      now: float) -> None:  # fmt: skip
        self.send_raw(data, sa.local, sa.remote)
        self._flights[key] = _Flight(
            data, sa.local, sa.remote, now + self._settings.retransmit_timeout_s, 0, phase, what
        )

    def _send_final(self, data: bytes, sa: IsakmpSa) -> None:
        """A message nothing answers (MM6, AM3, QM3, informational) goes out once. If it is lost, the
        peer retransmits its previous message, which `_receive` answers with this one again (see
        there). (Sending it twice unasked made charon, which had moved on, fail to decrypt the late
        copy: PAYLOAD_MALFORMED.)"""
        self.send_raw(data, sa.local, sa.remote)

    def _remember_answer(self, request: bytes, data: bytes | None, final: bool = False) -> None:
        """What we answered to an accepted message (None: nothing), for its retransmissions."""
        seen, digest = self._rx_digest
        key = digest if request is seen else _digest(request)
        self._answers[key] = _Answer(data, final, self._now if final else None)
        while len(self._answers) > _RESPONSE_CACHE:
            self._answers.popitem(last=False)

    def _just_resent(self, x: _Answer | _Tomb, now: float) -> bool:
        """A copy of a message that we answered (or answered again) a moment ago, such as the
        second of a pair of retransmissions (see `_on_timer`): our answer is on its way."""
        if x.resent_at is not None and now - x.resent_at < self._settings.retransmit_timeout_s / 2:
            return True
        x.resent_at = now
        return False

    def _current_sa(self) -> IsakmpSa | None:
        best: IsakmpSa | None = None
        for cookie, t in self._timers.items():
            sa = self._sas[cookie]
            if not t.replaced and (best is None or sa.sa_id > best.sa_id):
                best = sa
        return best

    def _dropped(self, reason: str, remote: Address) -> None:
        self.emit(PacketDropped(reason, remote))

    # --- inbound ----------------------------------------------------------------------------------

    def _receive(self, dg: Datagram, now: float) -> None:
        try:
            h = Header.decode(dg.data)
        except DecodeError as e:
            self._dropped(f"not a valid ISAKMP message: {e}", dg.remote)
            return
        digest = _digest(dg.data)
        self._rx_digest = (dg.data, digest)  # for `_remember_answer`: hashed once
        answer = self._answers.get(digest)
        if answer is not None:  # a retransmission of something we accepted: answer again
            data = answer.data
            if data is not None and not answer.final:
                self.send_raw(data, dg.local, dg.remote)  # it waits for an answer: its timer goes on
            elif data is not None and not self._just_resent(answer, now):
                # The peer evidently lacks the last message of the exchange, and nothing else will
                # bring it. A copy sent straight back after the retransmission that got through is
                # what a loss pattern in step with the peer's timer (every other datagram) loses
                # every time; of two copies back to back one gets through. A duplicate that arrives
                # is a retransmission of the request the peer just had (charon ignores it as such).
                self.send_raw(data, dg.local, dg.remote)
                self.send_raw(data, dg.local, dg.remote)
            return
        sa = self._find_sa(h)
        if sa is None:
            tomb = self._find_tomb(h)
            if tomb is not None:
                self._tomb_hit(tomb, dg, h)
                return
            self._dropped(f"no ISAKMP SA for cookies {h.cky_i.hex()}/{h.cky_r.hex()}", dg.remote)
            return
        cookie = sa.our_cookie
        try:
            if h.exchange in (Exchange.MAIN, Exchange.AGGRESSIVE):
                x = self._p1x.get(cookie)
                if x is None or h.exchange != x.EXCHANGE:
                    raise Drop(f"{Exchange(h.exchange).name.lower()} mode message outside a phase 1 negotiation")
                fresh = sa.cky_r == ZERO_COOKIE
                if fresh:
                    if h.cky_r == ZERO_COOKIE:
                        raise Drop("responder cookie is zero in a reply")
                    sa.cky_r = h.cky_r
                before = x.state
                self._phase1_step(sa, x, dg, h, now)
                if fresh and cookie in self._p1x and x.state == before:
                    sa.cky_r = ZERO_COOKIE  # a bad first reply must not pin the responder cookie
            elif h.exchange == Exchange.QUICK:
                self._quick_mode(sa, dg, h, now)
            elif h.exchange == Exchange.INFORMATIONAL:
                self._informational(sa, dg, h, now)
            elif h.exchange == Exchange.TRANSACTION:
                raise Drop("mode config / XAUTH (transaction exchange) is not supported; configure the peer without it")
            else:
                raise Drop(f"exchange type {h.exchange} is not supported")
        except Drop as e:
            self._dropped(e.reason, dg.remote)
            return
        self._check_volume(sa, now)

    def _follow_nat(self, sa: IsakmpSa, dg: Datagram) -> None:
        """An authenticated message from a new address behind a NAT: the mapping changed."""
        if sa.natt and (sa.nat_remote or sa.nat_local) and (dg.remote != sa.remote or dg.local != sa.local):
            sa.remote, sa.local = dg.remote, dg.local
            if sa is self._current_sa():
                self._local, self._remote = dg.local, dg.remote

    def _check_volume(self, sa: IsakmpSa, now: float) -> None:
        """Phase 1 lifetime in kilobytes (of IKE traffic under the SA): rekey, or expire."""
        t = self._timers.get(sa.our_cookie)
        if t is None or not sa.lifetime_kb:
            return
        limit = sa.lifetime_kb * 1024
        if sa.bytes_seen >= limit:
            t.expire_at = min(t.expire_at, now)
        elif t.rekey_at is not None and sa.bytes_seen >= limit * (1 - self._settings.rekey_margin):
            t.rekey_at = min(t.rekey_at, now)

    def _find_sa(self, h: Header) -> IsakmpSa | None:
        return _lookup(self._sas.get, h)

    def _find_tomb(self, h: Header) -> _Tomb | None:
        if not self._tombs:
            return None

        def get(cookie: bytes) -> IsakmpSa | None:
            tomb = self._tombs.get(cookie)
            return tomb.sa if tomb is not None else None

        sa = _lookup(get, h)
        return self._tombs[sa.our_cookie] if sa is not None else None

    def _tomb_hit(self, tomb: _Tomb, dg: Datagram, h: Header) -> None:
        sa = tomb.sa
        if not h.flags & 1 or tomb.resends >= self._settings.retransmit_tries:
            what = "ignored"
        elif self._just_resent(tomb, self._now):
            what = "its Delete was sent again a moment ago"
        else:
            tomb.resends += 1
            # Twice, for the same reason as a final message answered again (see `_receive`).
            self.send_raw(tomb.delete, dg.local, dg.remote)
            self.send_raw(tomb.delete, dg.local, dg.remote)
            what = "sent its Delete again"
        self._dropped(f"message under ISAKMP SA {sa.cky_i.hex()}/{sa.cky_r.hex()}, deleted after its rekey: {what}",
                      dg.remote)  # fmt: skip

    def _bury(self, now: float | None) -> None:
        """Forget the deleted SAs whose time is up (all of them: `now` None)."""
        for cookie, tomb in list(self._tombs.items()):
            if now is None or now >= tomb.until:
                del self._tombs[cookie]
                self.emit(SpiRemoved(cookie))

    # --- phase 1 ----------------------------------------------------------------------------------

    def _start_phase1(self, now: float, rekey_of: int | None) -> None:
        p1 = self._phase1
        assert p1 is not None
        if p1.policy.version != 1:
            self.emit(NegotiationFailed(1, f"tunnel {p1.name} is an IKEv{p1.policy.version} tunnel", p1))
            return
        if any(cookie not in self._timers for cookie in self._p1x):
            return  # one phase 1 negotiation at a time
        cky_i = self._new_cookie()
        local, remote = self._local, self._remote
        cur = self._current_sa()
        if cur is not None:  # a rekey starts where the SA now lives (port 4500 after NAT-T)
            local, remote = cur.local, cur.remote
        exch = Exchange.AGGRESSIVE if p1.policy.mode == "aggressive" else Exchange.MAIN
        sa = IsakmpSa(self._new_sa_id(), Role.INITIATOR, cky_i, ZERO_COOKIE, local, remote, exch)
        sa.rekey_of = rekey_of
        first = self._initial_contact and not self._ever_established
        ctx = Phase1Context(self._policies, self._settings, initial_contact=first)
        try:
            x: Phase1Exchange = (AggressiveMode if exch == Exchange.AGGRESSIVE else MainMode)(sa, ctx, p1)
            data = x.start()
        except ExchangeFailed as e:
            self.emit(NegotiationFailed(1, e.reason, p1, offered=e.offered))
            return
        self._sas[cky_i] = sa
        self._p1x[cky_i] = x
        self.emit(SpiAdded(cky_i))
        self._send_waiting(("p1", cky_i), data, sa, 1, f"{x.mode_name} with {remote[0]}", now)

    def _phase1_step(self, sa: IsakmpSa, x: Phase1Exchange, dg: Datagram, h: Header, now: float) -> None:
        cookie = sa.our_cookie
        try:
            out = x.receive(dg, h, now)
        except Drop as e:
            self._dropped(e.reason, dg.remote)
            return
        except ExchangeFailed as e:
            if x.opened == dg.data:
                sa.accept(dg.data, h)  # it was read: the IV of our notify follows it, as at the peer
            self._fail_phase1(sa, x, e)
            return
        self._flights.pop(("p1", cookie), None)
        waits = x.awaiting_reply
        if out is not None:
            if waits:
                self._send_waiting(("p1", cookie), out, sa, 1, f"{x.mode_name} with {sa.remote[0]}", now)
            else:
                self._send_final(out, sa)
        self._remember_answer(dg.data, out, final=not waits)
        if x.established:
            self._phase1_established(sa, x, now, confirmed=out is None)

    def _fail_phase1(self, sa: IsakmpSa, x: Phase1Exchange, e: ExchangeFailed, tell_peer: bool = True) -> None:
        if e.notify is not None and tell_peer:
            # With keys, only a protected notify is believed (an unprotected one could come from anyone).
            if sa.keys is not None:
                data = informational.notify(sa, e.notify)
            else:
                data = informational.plain_notify(sa.cky_i, sa.cky_r, e.notify)
            self.send_raw(data, sa.local, sa.remote)
        self.emit(
            NegotiationFailed(
                1,
                e.reason,
                x.tunnel or self._phase1,
                offered=e.offered,
                peer_offered=e.peer_offered,
                notify=notify_name(e.notify) if e.notify is not None else e.received_notify,
            )
        )
        self._abandon_phase1(sa.our_cookie)

    def _abandon_phase1(self, cookie: bytes) -> None:
        self._p1x.pop(cookie, None)
        self._flights.pop(("p1", cookie), None)
        if cookie in self._sas and cookie not in self._timers:
            del self._sas[cookie]
            self.emit(SpiRemoved(cookie))

    def _phase1_established(self, sa: IsakmpSa, x: Phase1Exchange, now: float, confirmed: bool) -> None:
        cookie = sa.our_cookie
        del self._p1x[cookie]
        sa.established_at = now
        assert sa.phase1 is not None and sa.proposal is not None
        assert sa.local_id is not None and sa.remote_id is not None
        self._ever_established = True
        if self._phase1 is None:
            self._phase1 = sa.phase1
        self._local, self._remote = sa.local, sa.remote
        margin = self._settings.rekey_margin
        rekey_at = None
        if sa.role is Role.INITIATOR:
            rekey_at = now + sa.lifetime_s * (1 - margin * (1 + random.random() * 0.5))
        pol = sa.phase1.policy
        dpd_at = now + pol.dpd_delay_s if pol.dpd_delay_s > 0 and sa.peer_dpd else None
        seq = random.randrange(1, 1 << 30)
        self._timers[cookie] = _SaTimers(
            rekey_at, now + sa.lifetime_s, dpd_at, seq, now, dpd_first=seq, confirmed=confirmed
        )
        self.emit(
            IkeSaEstablished(
                sa_id=sa.sa_id,
                version=1,
                role=sa.role,
                phase1=sa.phase1,
                local=sa.local,
                remote=sa.remote,
                local_id=sa.local_id,
                remote_id=sa.remote_id,
                proposal=sa.proposal,
                spi_i=sa.cky_i,
                spi_r=sa.cky_r,
                lifetime_s=sa.lifetime_s,
                nat_local=sa.nat_local,
                nat_remote=sa.nat_remote,
                rekey_of=sa.rekey_of,
                initial_contact=x.initial_contact_received,
            )
        )
        if sa.rekey_of is not None:
            for old_cookie, old in list(self._sas.items()):
                if old.sa_id == sa.rekey_of and old_cookie in self._timers:
                    self._retire_sa(old_cookie, now)
        pending, self._pending = self._pending, []
        for p2, rekey_of in pending:
            self._start_child(p2, rekey_of, now)

    def _retire_sa(self, cookie: bytes, now: float) -> None:
        """A rekey replaced this SA: nothing new starts on it, and its Delete goes out after a grace
        period, not right behind our last phase 1 message. charon may handle that Delete before it
        has moved the phase 2 SAs to the new ISAKMP SA (aggressive mode: AM3 and the Delete arrive
        together), and then deletes them with it. strongSwan also delays deleting a reauthenticated SA."""
        t = self._timers[cookie]
        t.replaced = True
        t.rekey_at = None
        t.dpd_at = None
        self._flights.pop(("dpd", cookie), None)
        grace = self._settings.extra.get("ikev1_rekeyed_delete_delay_s", REKEYED_DELETE_DELAY_S)
        t.delete_at = now + (float(grace) if isinstance(grace, int | float) else REKEYED_DELETE_DELAY_S)

    def _drop_sa(self, cookie: bytes, reason: str, dpd_action: str | None = None, keep_route: bool = False) -> None:
        sa = self._sas.pop(cookie, None)
        self._timers.pop(cookie, None)
        self._p1x.pop(cookie, None)
        for key in [k for k in self._flights if len(k) > 1 and k[1] == cookie]:
            del self._flights[key]
        for key in [k for k in self._qms if k[0] == cookie]:
            del self._qms[key]
        if sa is not None:
            sa.deleted = True
            self.emit(IkeSaDeleted(sa.sa_id, reason, dpd_action))
            if not keep_route:
                self.emit(SpiRemoved(cookie))

    # --- quick mode -------------------------------------------------------------------------------

    def _start_child(self, phase2: Phase2Tunnel, rekey_of: int | None, now: float) -> None:
        if self._closing:
            return
        sa = self._current_sa()
        if sa is None:
            self._pending.append((phase2, rekey_of))
            if self._phase1 is not None and not self._p1x:
                self._start_phase1(now, None)
            return
        if sum(1 for q in self._qms.values() if not q.done) >= _MAX_QM_IN_FLIGHT:
            self.emit(NegotiationFailed(2, "too many quick modes in flight", sa.phase1, phase2, rekey_of=rekey_of))
            return
        msgid = informational.new_msgid(sa)
        qm = QuickMode(sa, Role.INITIATOR, msgid, self._policies, phase2, rekey_of)
        try:
            data = qm.start()
        except ExchangeFailed as e:
            self.emit(NegotiationFailed(2, e.reason, sa.phase1, phase2, offered=e.offered, rekey_of=rekey_of))
            return
        self._qms[(sa.our_cookie, msgid)] = qm
        self._send_waiting(("qm", sa.our_cookie, msgid), data, sa, 2, f"quick mode for {phase2.name}", now)

    def _quick_mode(self, sa: IsakmpSa, dg: Datagram, h: Header, now: float) -> None:
        cookie = sa.our_cookie
        if cookie not in self._timers:
            raise Drop("quick mode before phase 1 is complete")
        if not h.flags & 1:
            raise Drop("unencrypted quick mode message")
        key = (cookie, h.message_id)
        qm = self._qms.get(key)
        if qm is None:
            if h.message_id in sa.used_msgids and self._connected_notify(sa, dg, h):
                return
            if h.message_id == 0 or h.message_id in sa.used_msgids:
                raise Drop(f"quick mode message ID {h.message_id:#x} is zero or already used")
            if len(self._qms) >= _MAX_QM_IN_FLIGHT * 2:
                self._gc_qms()
            qm = QuickMode(sa, Role.RESPONDER, h.message_id, self._policies)
        try:
            out = qm.receive(dg, h, now)
        except Drop:
            raise
        except ExchangeFailed as e:
            self._fail_qm(sa, qm, e)
            return
        self._timers[cookie].last_heard = now
        self._timers[cookie].confirmed = True
        self._follow_nat(sa, dg)
        if key not in self._qms:
            sa.used_msgids.add(h.message_id)
            self._qms[key] = qm
        self._flights.pop(("qm", cookie, h.message_id), None)
        waits = qm.awaiting_reply
        if out is not None:
            if waits:
                self._send_waiting(("qm", cookie, h.message_id), out, sa, 2, f"quick mode with {sa.remote[0]}", now)
            else:
                self._send_final(out, sa)
        self._remember_answer(dg.data, out, final=not waits)
        if qm.done:
            self._child_established(sa, qm, now)

    def _connected_notify(self, sa: IsakmpSa, dg: Datagram, h: Header) -> bool:
        """A fourth quick mode message, HDR*, HASH, N(CONNECTED), from a peer that set the commit bit
        (RFC 2408 §3.1, RFC 2409 §5.5). Our SA is in use since QM3 already (as with strongSwan), so
        it only needs to be accepted quietly."""
        try:
            rx = informational.receive(sa, dg.data, h)
        except Drop:
            return False
        if any(n.notify_type == NotifyType.CONNECTED for n in rx.notifies):
            self._remember_answer(dg.data, None)
            return True
        return False

    def _gc_qms(self) -> None:
        for key in [k for k, q in self._qms.items() if q.done]:
            del self._qms[key]

    def _fail_qm(self, sa: IsakmpSa, qm: QuickMode, e: ExchangeFailed) -> None:
        if e.notify is not None and sa.keys is not None:
            spi = qm.choice.peer_spi if qm.choice is not None else qm.our_spi
            self.send_raw(informational.notify(sa, e.notify, qm.protocol, spi), sa.local, sa.remote)
        self.emit(
            NegotiationFailed(
                2,
                e.reason,
                sa.phase1,
                qm.phase2,
                offered=e.offered,
                peer_offered=e.peer_offered,
                notify=notify_name(e.notify) if e.notify is not None else e.received_notify,
                rekey_of=qm.rekey_of,
            )
        )
        self._qms.pop((sa.our_cookie, qm.msgid), None)
        self._flights.pop(("qm", sa.our_cookie, qm.msgid), None)

    def _child_established(self, sa: IsakmpSa, qm: QuickMode, now: float) -> None:
        r = qm.result
        assert r is not None
        self._gc_qms()
        rekey_of = r.rekey_of
        if rekey_of is None and r.role is Role.RESPONDER:
            # The peer's rekey: the newest live SA of the same definition and selectors.
            for c in sorted(self._children.values(), key=lambda c: -c.child_id):
                if c.phase2.number == r.phase2.number and not c.replaced:
                    rekey_of = c.child_id
                    break
        cid = self._next_child_id
        self._next_child_id += 1
        margin = self._settings.rekey_margin
        rekey_at = None
        if r.role is Role.INITIATOR:
            rekey_at = now + r.lifetime_s * (1 - margin * (1 + random.random() * 0.5))
        self._children[cid] = _Child(
            cid, sa.sa_id, r.phase2, r.role, PROTO_AH if r.protocol == "ah" else PROTO_ESP,
            r.inbound.spi, r.outbound.spi, now, rekey_at, now + r.lifetime_s,
        )  # fmt: skip
        self.emit(
            ChildSaEstablished(
                child_id=cid,
                sa_id=sa.sa_id,
                phase2=r.phase2,
                role=r.role,
                protocol=r.protocol,
                mode=r.mode,
                proposal=r.proposal,
                inbound=r.inbound,
                outbound=r.outbound,
                local_ts=(r.local_ts,),
                remote_ts=(r.remote_ts,),
                local=sa.local,
                remote=sa.remote,
                udp_encap=r.udp_encap,
                lifetime_s=r.lifetime_s,
                lifetime_kb=r.lifetime_kb,
                pfs_group=r.pfs_group,
                rekey_of=rekey_of,
            )
        )
        if rekey_of is not None and rekey_of in self._children:
            old = self._children[rekey_of]
            old.replaced = True
            old.rekey_at = None
            if r.role is Role.INITIATOR:
                # Its Delete waits a grace period: the responder installs the new SA only on QM3,
                # and a Delete right behind a lost QM3 would leave it no SA for the tunnel until
                # QM3 is resent. Meanwhile the old SA still takes inbound packets.
                grace = self._settings.extra.get("ikev1_rekeyed_delete_delay_s", REKEYED_DELETE_DELAY_S)
                grace_s = float(grace) if isinstance(grace, int | float) else REKEYED_DELETE_DELAY_S
                old.expire_at = min(old.expire_at, now + grace_s)

    def _delete_child(self, child_id: int, reason: str, notify_peer: bool) -> None:
        c = self._children.pop(child_id, None)
        if c is None:
            return
        if notify_peer:
            sa = self._current_sa()
            if sa is not None:
                self._send_final(informational.delete_ipsec(sa, c.protocol, (c.inbound_spi,)), sa)
        self.emit(ChildSaDeleted(child_id, reason))

    # --- informational ----------------------------------------------------------------------------

    def _informational(self, sa: IsakmpSa, dg: Datagram, h: Header, now: float) -> None:
        cookie = sa.our_cookie
        self._current_request = dg.data
        rx = informational.receive(sa if sa.keys is not None else None, dg.data, h)
        if not rx.protected:
            # Only an error notify during phase 1, before there are keys, is believed unprotected.
            x = self._p1x.get(cookie)
            errors = [n for n in rx.notifies if n.notify_type < 16384]
            if x is not None and sa.keys is None and errors:
                self._fail_phase1(sa, x, ExchangeFailed(
                    f"the peer refused phase 1: {notify_name(errors[0].notify_type)}",
                    offered=x.offered_lines([x.tunnel]) if x.tunnel else (),
                    received_notify=notify_name(errors[0].notify_type),
                ))  # fmt: skip
                return
            raise Drop("unprotected informational message ignored")
        self._remember_answer(dg.data, None)
        if self._phase1_refused(sa, rx):
            return
        t = self._timers.get(cookie)
        if t is not None:
            t.last_heard = now
            t.confirmed = True
            self._follow_nat(sa, dg)
        for n in rx.notifies:
            self._on_notify(sa, n, now)
        for d in rx.deletes:
            self._on_delete(sa, d)

    def _phase1_refused(self, sa: IsakmpSa, rx: informational.Received) -> bool:
        """A protected error notify about phase 1 from a peer that has the keys but refused the rest:
        our identity, certificate or authentication in MM5 or AM3 (or, the other way round, its
        own in MM6 or AM2). It ends that SA with the peer's reason, at once, instead of a timeout
        or an SA only one side has."""
        cookie = sa.our_cookie
        x = self._p1x.get(cookie)
        t = self._timers.get(cookie)
        if x is None and (t is None or t.confirmed):
            return False
        kinds: frozenset[int] | range = _PHASE1_REFUSALS if x is None else _ERRORS
        hit = [
            n.notify_type
            for n in rx.notifies
            if n.notify_type in kinds and n.protocol == PROTO_ISAKMP and n.spi in (b"", sa.cookies)
        ]
        if not hit:
            return False
        name = notify_name(hit[0])
        reason = f"the peer refused phase 1: {name}{_REFUSAL_HINTS.get(hit[0], '')}"
        if x is not None:
            self._fail_phase1(sa, x, ExchangeFailed(reason, received_notify=name), tell_peer=False)
        else:
            self.emit(NegotiationFailed(1, reason, sa.phase1, notify=name))
            self._drop_sa(cookie, reason)
        return True

    def _on_notify(self, sa: IsakmpSa, n: object, now: float) -> None:
        from ike.proto.v1.payloads import NotifyPayload

        assert isinstance(n, NotifyPayload)
        cookie = sa.our_cookie
        if n.notify_type == NotifyType.R_U_THERE:
            if len(n.data) != 4 or n.spi != sa.cookies:
                raise Drop("R-U-THERE with a bad sequence number or SPI")
            ack = informational.r_u_there_ack(sa, int.from_bytes(n.data, "big"))
            self._send_final(ack, sa)
            self._remember_answer(self._current_request, ack, final=True)
            return
        if n.notify_type == NotifyType.R_U_THERE_ACK:
            t = self._timers.get(cookie)
            seq = int.from_bytes(n.data, "big") if len(n.data) == 4 else -1
            if (
                t is not None
                and ("dpd", cookie) not in self._flights
                and t.dpd_seq != t.dpd_first
                and _seq_between(t.dpd_first, seq, (t.dpd_seq - 1) & 0xFFFFFFFF)
            ):
                return  # the ACK of the other R-U-THERE of a round already answered
            if t is None or ("dpd", cookie) not in self._flights or not _seq_between(t.dpd_first, seq, t.dpd_seq):
                raise Drop("R-U-THERE-ACK that answers no R-U-THERE of ours")
            self._flights.pop(("dpd", cookie), None)
            t.dpd_seq = (t.dpd_seq + 1) & 0xFFFFFFFF
            assert sa.phase1 is not None
            t.dpd_at = now + sa.phase1.policy.dpd_delay_s
            return
        if n.notify_type < 16384:
            # An error about one of our quick modes (matched by SPI, else the only one in flight).
            mine = [q for (c, _), q in self._qms.items() if c == cookie and q.role is Role.INITIATOR and not q.done]
            hit = [q for q in mine if q.our_spi == n.spi] or (mine if len(mine) == 1 else [])
            for q in hit:
                self._fail_qm(sa, q, ExchangeFailed(
                    f"the peer refused quick mode: {notify_name(n.notify_type)}",
                    offered=q.offered_lines(q.phase2) if q.phase2 else (),
                    received_notify=notify_name(n.notify_type),
                ))  # fmt: skip
            if not hit:
                self._dropped(f"peer reports {notify_name(n.notify_type)}", sa.remote)
        # Status notifies (INITIAL-CONTACT, RESPONDER-LIFETIME, REPLAY-STATUS...) need nothing here.

    def _on_delete(self, sa: IsakmpSa, d: object) -> None:
        from ike.proto.v1.payloads import DeletePayload

        assert isinstance(d, DeletePayload)
        if d.protocol == PROTO_ISAKMP:
            for spi in d.spis:
                if len(spi) != 16:
                    continue
                for cookie, s in list(self._sas.items()):
                    if s.cookies == spi:
                        self._drop_sa(cookie, "deleted by peer")
            return
        if d.protocol in (PROTO_ESP, PROTO_AH):
            for spi in d.spis:
                for c in list(self._children.values()):
                    if c.outbound_spi == spi and c.protocol == d.protocol:
                        self._delete_child(
                            c.child_id, "rekeyed" if c.replaced else "deleted by peer", notify_peer=False
                        )

    # --- timers -----------------------------------------------------------------------------------

    def _on_timer(self, now: float) -> None:
        for key, f in list(self._flights.items()):
            if key not in self._flights or f.next_at > now:
                continue
            if f.tries >= self._settings.retransmit_tries:
                self._give_up(key, f)
                continue
            f.tries += 1
            f.next_at = now + self._settings.retransmit_timeout_s * (2**f.tries)
            # A retransmission goes out as two copies back to back. It means something was lost, and
            # a single copy on a timer can fall in step with a regular loss pattern (every other
            # datagram), given the other traffic in between, for every try; of two, one gets through.
            # The peer answers a duplicate as a retransmission (and we ignore its second answer).
            if key[0] == "dpd":
                # RFC 3706 §5.5: each R-U-THERE is a new message with the next sequence number (a peer
                # may take a repeated one for a retransmission it already answered); any of the
                # round's ACKs will do.
                self.send_raw(self._next_r_u_there(key[1]), f.local, f.remote)  # type: ignore[arg-type]
                f.data = self._next_r_u_there(key[1])  # type: ignore[arg-type]
            else:
                self.send_raw(f.data, f.local, f.remote)
            self.send_raw(f.data, f.local, f.remote)
        for cookie, t in list(self._timers.items()):
            if cookie not in self._timers:
                continue
            sa = self._sas[cookie]
            if now >= t.expire_at:
                self._send_final(informational.delete_isakmp(sa), sa)
                self._drop_sa(cookie, "rekeyed" if t.replaced else "expired")
                continue
            if t.delete_at is not None and now >= t.delete_at:
                delete = informational.delete_isakmp(sa)
                self._send_final(delete, sa)
                self._drop_sa(cookie, "rekeyed", keep_route=True)
                self._tombs[cookie] = _Tomb(sa, delete, t.expire_at)
                continue
            if t.rekey_at is not None and now >= t.rekey_at:
                t.rekey_at = None
                if not self._closing and self._phase1 is not None:
                    self._start_phase1(now, sa.sa_id)
            if t.dpd_at is not None and now >= t.dpd_at:
                self._dpd_check(sa, t, now)
        self._bury(now)
        for c in list(self._children.values()):
            if c.child_id not in self._children:
                continue
            if now >= c.expire_at:
                self._delete_child(c.child_id, "rekeyed" if c.replaced else "expired", notify_peer=True)
            elif c.rekey_at is not None and now >= c.rekey_at:
                c.rekey_at = None
                # Without an ISAKMP SA (deleted by the peer, or by us) a phase 2 SA runs on until it
                # expires and is not refreshed (AIX); a peer that re-authenticated brings its own.
                if not self._closing and self._current_sa() is not None:
                    self._start_child(c.phase2, c.child_id, now)

    def _dpd_check(self, sa: IsakmpSa, t: _SaTimers, now: float) -> None:
        assert sa.phase1 is not None
        delay = sa.phase1.policy.dpd_delay_s
        if ("dpd", sa.our_cookie) in self._flights:
            t.dpd_at = None
            return
        due = t.last_heard + delay
        if due > now:  # heard from the peer lately: no need to ask yet (same float sum as the timer)
            t.dpd_at = due
            return
        t.dpd_at = None
        t.dpd_first = t.dpd_seq
        self._send_waiting(("dpd", sa.our_cookie), informational.r_u_there(sa, t.dpd_seq), sa, 1,
                           f"DPD R-U-THERE to {sa.remote[0]}", now)  # fmt: skip

    def _next_r_u_there(self, cookie: bytes) -> bytes:
        sa, t = self._sas[cookie], self._timers[cookie]
        t.dpd_seq = (t.dpd_seq + 1) & 0xFFFFFFFF
        return informational.r_u_there(sa, t.dpd_seq)

    def _give_up(self, key: tuple[object, ...], f: _Flight) -> None:
        del self._flights[key]
        reason = f"no answer from the peer to {f.what} after {f.tries} retransmissions"
        if key[0] == "p1":
            cookie = key[1]
            assert isinstance(cookie, bytes)
            x = self._p1x.get(cookie)
            self.emit(NegotiationFailed(1, reason, x.tunnel if x else self._phase1))
            self._abandon_phase1(cookie)
        elif key[0] == "qm":
            cookie, msgid = key[1], key[2]
            assert isinstance(cookie, bytes) and isinstance(msgid, int)
            qm = self._qms.pop((cookie, msgid), None)
            sa = self._sas.get(cookie)
            p1, p2, rekey_of = (sa.phase1 if sa else None), (qm.phase2 if qm else None), (qm.rekey_of if qm else None)
            self.emit(NegotiationFailed(2, reason, p1, p2, rekey_of=rekey_of))
        elif key[0] == "dpd":
            self._peer_dead()

    def _peer_dead(self) -> None:
        # Only reported: what follows (clear, hold, restart with back-off) is the daemon's decision.
        action = self._phase1.policy.dpd_action.value if self._phase1 is not None else None
        for cookie in list(self._sas):
            self._drop_sa(cookie, "peer unreachable (DPD)", action)
        for cid in list(self._children):
            self._delete_child(cid, "peer unreachable (DPD)", notify_peer=False)
        self._qms.clear()
        self._flights.clear()


def _lookup(get: Callable[[bytes], IsakmpSa | None], h: Header) -> IsakmpSa | None:
    """The SA a message with these cookies belongs to (`get`: by our cookie)."""
    sa = get(h.cky_i)
    if (
        sa is not None
        and sa.role is Role.INITIATOR
        and (sa.cky_r == h.cky_r or sa.cky_r == ZERO_COOKIE or h.cky_r == ZERO_COOKIE)
    ):
        return sa
    sa = get(h.cky_r)
    if sa is not None and sa.role is Role.RESPONDER and sa.cky_i == h.cky_i:
        return sa
    return None


def _seq_between(first: int, seq: int, last: int) -> bool:
    """first <= seq <= last in 32-bit sequence arithmetic."""
    return 0 <= seq <= 0xFFFFFFFF and (seq - first) & 0xFFFFFFFF <= (last - first) & 0xFFFFFFFF


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]
