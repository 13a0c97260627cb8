"""`Ikev2Engine`: one IKEv2 association with one peer, sans-IO (the Engine protocol of proto/api.py).

Shape (after strongSwan's task queue and aioquic's connection object):

- The engine holds IKE SAs by our SPI (more than one only around an IKE rekey); `self.sa` is the
  current one. Each IKE SA runs a queue of initiator tasks (exchanges/*.py) one at a time, window 1.
- Requests from the peer go to the exchange module's `process_r` (`_dispatch`), responses to the
  task that sent the request (`_complete`). Retransmitted requests are answered from a cache.
- Everything leaves as `Datagram`s, events and one timer deadline; every failure is an event, and
  every refused packet a `PacketDropped` event: nothing raises out of `receive_datagram`,
  `handle_timer` or the API calls.

Construction:
    Ikev2Engine.initiate(phase1, children, policies, settings, local, remote, now)
    Ikev2Engine.respond(dg, policies, settings, now, out=None)  -> engine, or None when the first
        IKE_SA_INIT was answered statelessly (COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN, ...) or
        dropped; the reply datagrams and events of that case are appended to `out` (StatelessOutput).

Settings read from `EngineSettings.extra` (all optional):
    "wall_clock": () -> float   UNIX time for certificate validity (default time.time)
    "force_udp_encap": bool     fake NAT-D so the peer sees a NAT and ESP goes in UDP (like strongSwan's encap)
    "half_open_timeout_s": float  responder's wait for IKE_AUTH (default 30)
    "ikev2_cookie_guard": CookieGuard   the half-open counter and cookie secret (default: process-wide)
    "signature_hash_notify": bool  send SIGNATURE_HASH_ALGORITHMS (default True; False forces the
                                   classic RSA/ECDSA AUTH methods on the peer)
    "rsa_pss": bool             sign with RSASSA-PSS (RFC 7427) with an RSA key (default False: PKCS#1
                                v1.5, unless the peer signed with PSS); PSS from peers is always accepted
    "send_cert": str            "ifasked" (default, strongSwan's): our CERT only to a peer that sent
                                CERTREQ; "always": in every IKE_AUTH with certificates
    "send_certreq": bool        send CERTREQ for the configured CA (default True)
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ike.policy import Phase1Tunnel, Phase2Tunnel
from ike.proto import certs
from ike.proto.api import (
    Address,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaKeys,
    Datagram,
    EngineSettings,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PacketDropped,
    PolicySource,
    Role,
    SpiAdded,
    SpiRemoved,
)
from ike.proto.crypto import CryptoError
from ike.proto.engine_base import EngineOutput
from ike.proto.v2.exchanges import child_create, child_rekey, delete, dpd, ike_auth, ike_init, ike_rekey
from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.exchanges.child_create import ChildCreate
from ike.proto.v2.exchanges.child_rekey import ChildRekey
from ike.proto.v2.exchanges.delete import DeleteChild, DeleteIke
from ike.proto.v2.exchanges.dpd import Dpd
from ike.proto.v2.exchanges.ike_auth import IkeAuth
from ike.proto.v2.exchanges.ike_init import DEFAULT_GUARD, CookieGuard, IkeInit
from ike.proto.v2.exchanges.ike_rekey import IkeRekey
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import SKF, DecodeError, Payload, RawBody, UnknownPayload, decode_chain, encode_chain
from ike.proto.v2.payloads.delete import DeletePayload
from ike.proto.v2.payloads.header import (
    CREATE_CHILD_SA,
    EXCHANGE_NAMES,
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    IKE_AUTH,
    IKE_SA_INIT,
    INFORMATIONAL,
    IkeHeader,
)
from ike.proto.v2.payloads.message import Message, decode_outer, encode_plain, encrypted_part
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.payloads.sk import fragment_numbers
from ike.proto.v2.state import REQUESTS_ACCEPTED, ChildSa, ChildState, IkeSa, IkeState, Outstanding

ZERO_SPI = bytes(8)
MAX_FRAGMENTS = 64

_sa_ids = itertools.count(1)
_child_ids = itertools.count(1)
# Our SPIs are unique in the process: the daemon demultiplexes by them.
_IKE_SPIS: set[bytes] = set()
_CHILD_SPIS: set[bytes] = set()


_spi_pool = bytearray()


def _spi_bytes(n: int) -> bytes:
    """Random SPI bytes from a pool refilled 1 KiB at a time: SPIs need to be unpredictable and
    unique, and one getrandom call per SPI showed in the responder's profile."""
    global _spi_pool
    if len(_spi_pool) < n:
        _spi_pool = bytearray(os.urandom(1024))
    out = bytes(_spi_pool[:n])
    del _spi_pool[:n]
    return out


@dataclass
class StatelessOutput:
    """Where `Ikev2Engine.respond` puts what it sent and reported when it kept no state."""

    datagrams: list[Datagram] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _dead(sa: IkeSa) -> bool:
    # A function, not an inline test: callbacks change sa.state behind mypy's narrowing.
    return sa.state is IkeState.DEAD


def _name(exchange: int) -> str:
    return EXCHANGE_NAMES.get(exchange, f"exchange {exchange}")


class Ikev2Engine(EngineOutput):
    def __init__(self, policies: PolicySource, settings: EngineSettings, role: Role) -> None:
        super().__init__()
        self.role = role
        self.policies = policies
        self.settings = settings
        guard = settings.extra.get("ikev2_cookie_guard")
        self.cookie_guard: CookieGuard = guard if isinstance(guard, CookieGuard) else DEFAULT_GUARD
        self.stats: Counter[str] = Counter()
        self.sa: IkeSa | None = None
        self.phase1: Phase1Tunnel | None = None
        self._wanted: list[Phase2Tunnel] = []
        self._origin: tuple[Address, Address] | None = None
        self._sas: dict[bytes, IkeSa] = {}
        # Child deadlines as a lazy min-heap of (deadline, child_id): an entry is checked against the
        # child when it reaches the top, and every change to a child's deadline pushes a fresh one.
        self._child_deadlines: list[tuple[float, int]] = []
        self._now = 0.0
        # Outbound SPIs the peer deleted before we knew them (its Delete overtook the response that
        # creates the child): such a child is not installed when that response arrives.
        self._deleted_early: dict[bytes, float] = {}
        self._closing = False
        self._refresh = True  # False after stop_refreshing(): nothing here is rekeyed any more
        self._ca_cache: dict[str, list[x509.Certificate]] = {}
        self._keyid_cache: dict[str, list[bytes]] = {}
        self._own_cache: dict[tuple[str, str], tuple[x509.Certificate, certs.PrivateKey]] = {}
        self.send_initial_contact = True  # initiator: INITIAL_CONTACT in the first IKE_AUTH

    # --- construction -----------------------------------------------------------------------------

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
    ) -> Ikev2Engine:
        """`initial_contact`: no other SA with this peer exists (RFC 7296 §2.4); the daemon knows."""
        eng = cls(policies, settings, Role.INITIATOR)
        eng.send_initial_contact = initial_contact
        eng.phase1 = phase1
        eng._wanted = list(children)
        eng._origin = (local, remote)
        eng._now = now
        eng._guarded(eng._start, now)
        return eng

    @classmethod
    def respond(
        cls,
        dg: Datagram,
        policies: PolicySource,
        settings: EngineSettings,
        now: float,
        out: StatelessOutput | None = None,
    ) -> Ikev2Engine | None:
        eng = cls(policies, settings, Role.RESPONDER)
        eng._now = now
        sa: IkeSa | None = None
        try:
            header, outer = decode_outer(dg.data)
            if header.exchange != IKE_SA_INIT:
                eng.drop(dg, f"{_name(header.exchange)} message for no IKE SA of ours (unknown SPI)")
            else:
                sa = ike_init.process_r(eng, dg, Message(header, outer, dg.data), now)
        except DecodeError as e:
            eng.drop(dg, f"malformed IKEv2 message: {e}")
        except Exception as e:
            eng.drop(dg, f"internal error answering IKE_SA_INIT ({type(e).__name__}: {e})")
        if sa is None:
            if out is not None:
                out.datagrams += eng.datagrams_to_send()
                out.events += list(eng._events)
            return None
        eng.sa = sa
        eng.phase1 = sa.phase1
        return eng

    def _start(self, now: float) -> None:
        p1 = self.phase1
        assert p1 is not None and self._origin is not None
        local, remote = self._origin
        sa = self.new_sa(
            initiator=True, spi_i=self.new_ike_spi(), local=local, remote=remote, state=IkeState.INIT_SENT, now=now
        )
        sa.phase1 = p1
        sa.force_encap = bool(self.settings.extra.get("force_udp_encap", False))
        self.sa = sa
        if not p1.policy.proposals:
            self.fail(sa, 1, f"tunnel {p1.name} has no IKE proposals")
            return
        sa.tasks.append(IkeInit(p1.policy.proposals[0].dh))
        sa.tasks.append(IkeAuth(self._wanted[0] if self._wanted else None))
        for c in self._wanted[1:]:
            sa.tasks.append(ChildCreate(c))
        self._kick(sa, now)

    # --- the Engine protocol ----------------------------------------------------------------------

    def receive_datagram(self, dg: Datagram, now: float) -> None:
        self._now = now
        try:
            self._receive(dg, now)
        except Exception as e:
            self.drop(dg, f"internal error while processing ({type(e).__name__}: {e})")

    def handle_timer(self, now: float) -> None:
        self._guarded(self._timers, now)

    def get_timer(self) -> float | None:
        best: float | None = None
        for sa in self._sas.values():
            for t in self._deadlines(sa):
                if best is None or t < best:
                    best = t
        heap = self._child_deadlines
        while heap:
            d, cid = heap[0]
            actual = self._child_deadline(cid)
            if actual is None:
                heapq.heappop(heap)
            elif actual != d:
                heapq.heapreplace(heap, (actual, cid))
            else:
                if best is None or d < best:
                    best = d
                break
        return best

    def _child_deadline(self, child_id: int) -> float | None:
        for sa in self._sas.values():
            c = sa.children.get(child_id)
            if c is None:
                continue
            if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
                return None
            best: float | None = None
            if self._refresh and c.state is ChildState.INSTALLED and c.rekey_at is not None:
                best = c.rekey_at
            if c.state not in (ChildState.DELETING, ChildState.DELETED):
                best = c.expire_at if best is None else min(best, c.expire_at)
            return best
        return None

    def _child_deadline_changed(self, child: ChildSa) -> None:
        d = self._child_deadline(child.child_id)
        if d is not None:
            heapq.heappush(self._child_deadlines, (d, child.child_id))

    def start_child(self, phase2: Phase2Tunnel, now: float) -> None:
        def go(now: float) -> None:
            sa = self.sa
            if sa is None or sa.state is IkeState.DEAD:
                if self.phase1 is None:
                    self.emit_failed(2, "no IKE SA to negotiate the child SA under", phase2=phase2)
                    return
                self._wanted = [phase2]
                self._restart(now)
                return
            self.queue(sa, ChildCreate(phase2), now)

        self._guarded(go, now)

    def stop_refreshing(self, now: float) -> None:
        """AIX phase 1 removal: the child SAs run on until they expire and are not rekeyed, and
        neither is this IKE SA (RFC 7296 §1.4.1 keeps it for them; the daemon deletes it with the
        last child). The peer's requests for a new or rekeyed child SA are refused with
        NO_ADDITIONAL_SAS; its IKE SA rekey is taken, so the children reach their own expiry.
        Deadlines only move later, so the lazy heap needs no push."""
        self._refresh = False

    def rekey_child(self, child_id: int, now: float) -> None:
        def go(now: float) -> None:
            for sa in self._sas.values():
                if child_id in sa.children:
                    self.queue(sa, ChildRekey(child_id), now)

        self._guarded(go, now)

    def delete_child(self, child_id: int, now: float) -> None:
        def go(now: float) -> None:
            for sa in self._sas.values():
                if child_id in sa.children:
                    self.queue(sa, DeleteChild(child_id, "deleted locally"), now)

        self._guarded(go, now)

    def rekey_ike(self, now: float) -> None:
        def go(now: float) -> None:
            if self.sa is not None and self.sa.state is IkeState.ESTABLISHED:
                self.queue(self.sa, IkeRekey(), now)

        self._guarded(go, now)

    def delete(self, now: float) -> None:
        def go(now: float) -> None:
            for sa in list(self._sas.values()):
                if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED):
                    sa.tasks.appendleft(DeleteIke("deleted locally"))
                    self._kick(sa, now)
                elif sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.HALF_OPEN):
                    self.fail(sa, 1, "negotiation cancelled locally")

        self._guarded(go, now)

    def is_established(self) -> bool:
        return self.sa is not None and self.sa.state is IkeState.ESTABLISHED

    def is_finished(self) -> bool:
        """No IKE SA left (all deleted or failed): the daemon may forget this engine."""
        return not self._sas

    def traffic_seen(self, now: float) -> None:
        """The data plane saw ESP from the peer: postpones the next liveness check."""
        if self.sa is not None:
            self.sa.last_heard = max(self.sa.last_heard, now)

    def child_sas(self) -> list[ChildSa]:
        return [c for sa in self._sas.values() for c in sa.children.values()]

    # --- helpers the exchanges use ----------------------------------------------------------------

    def drop(self, dg: Datagram, reason: str) -> None:
        self.stats["dropped"] += 1
        self.emit(PacketDropped(reason, dg.remote))

    def emit_failed(
        self,
        phase: int,
        reason: str,
        *,
        phase1: Phase1Tunnel | None = None,
        phase2: Phase2Tunnel | None = None,
        offered: tuple[str, ...] = (),
        peer_offered: tuple[str, ...] = (),
        notify: str | None = None,
        rekey_of: int | None = None,
    ) -> None:
        self.stats["failed"] += 1
        self.emit(NegotiationFailed(phase, reason, phase1, phase2, offered, peer_offered, notify, rekey_of))

    def fail(
        self,
        sa: IkeSa,
        phase: int,
        reason: str,
        *,
        phase2: Phase2Tunnel | None = None,
        offered: tuple[str, ...] = (),
        peer_offered: tuple[str, ...] = (),
        notify: str | None = None,
        kill: bool = True,
        rekey_of: int | None = None,
    ) -> None:
        """Report a failure; a phase 1 failure of an SA being set up also ends that SA."""
        self.emit_failed(
            phase,
            reason,
            phase1=sa.phase1,
            phase2=phase2,
            offered=offered,
            peer_offered=peer_offered,
            notify=notify,
            rekey_of=rekey_of,
        )
        if kill and phase == 1 and sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.HALF_OPEN):
            self.kill_sa(sa, reason, self._now, quiet=True)

    def new_ike_spi(self) -> bytes:
        while True:
            spi = _spi_bytes(8)
            if spi != ZERO_SPI and spi not in _IKE_SPIS:
                _IKE_SPIS.add(spi)
                return spi

    def alloc_child_spi(self) -> bytes:
        while True:
            spi = _spi_bytes(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in _CHILD_SPIS:
                _CHILD_SPIS.add(spi)
                return spi

    def release_child_spi(self, spi: bytes) -> None:
        _CHILD_SPIS.discard(spi)

    def new_child_id(self) -> int:
        return next(_child_ids)

    def new_sa(
        self,
        *,
        initiator: bool,
        spi_i: bytes,
        local: Address,
        remote: Address,
        state: IkeState,
        now: float,
        spi_r: bytes = ZERO_SPI,
    ) -> IkeSa:
        if not initiator:
            spi_r = self.new_ike_spi()
        sa = IkeSa(next(_sa_ids), initiator, spi_i, spi_r, local, remote, state, now, last_heard=now)
        if state is IkeState.HALF_OPEN:
            self.cookie_guard.half_open += 1
            sa.counted_half_open = True
            sa.half_open_deadline = now + float(self.settings.extra.get("half_open_timeout_s", 30.0))  # type: ignore[arg-type]
        self._sas[sa.our_spi] = sa
        self.emit(SpiAdded(sa.our_spi))
        return sa

    def set_peer_spi(self, sa: IkeSa, spi_r: bytes) -> None:
        sa.spi_r = spi_r

    def set_state(self, sa: IkeSa, new: IkeState) -> None:
        sa.set_state(new)
        if sa.counted_half_open and new is not IkeState.HALF_OPEN:
            sa.counted_half_open = False
            self.cookie_guard.half_open -= 1

    def float_to_4500(self, sa: IkeSa) -> None:
        """RFC 7296 §2.23: after NAT detection the initiator continues on port 4500."""
        if sa.remote[1] == 500:
            sa.remote = (sa.remote[0], 4500)
        if sa.local[1] == 500:
            sa.local = (sa.local[0], 4500)

    def queue(self, sa: IkeSa, task: Task, now: float) -> None:
        if not isinstance(task, DeleteIke):
            sa = self.live_sa(sa)  # work for children follows them to the IKE SA that replaced this one
        if isinstance(task, IkeRekey | Dpd) and any(type(t) is type(task) for t in sa.tasks):
            return
        sa.tasks.append(task)
        self._kick(sa, now)

    def wall_time(self, now: float) -> float:
        clock = self.settings.extra.get("wall_clock")
        return float(clock()) if callable(clock) else time.time()

    def ca_certs(self, path: str) -> list[x509.Certificate]:
        if path not in self._ca_cache:
            self._ca_cache[path] = certs.load_ca(path)
        return self._ca_cache[path]

    def ca_keyids(self, path: str) -> list[bytes]:
        """SHA-1 of each CA's SubjectPublicKeyInfo, for CERTREQ; empty if the file is unusable."""
        if path not in self._keyid_cache:
            try:
                cas = self.ca_certs(path)
            except certs.AuthError:
                cas = []
            self._keyid_cache[path] = [
                hashlib.sha1(
                    c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo), usedforsecurity=False
                ).digest()
                for c in cas
            ]
        return self._keyid_cache[path]

    def own_credentials(self, p1: Phase1Tunnel) -> tuple[x509.Certificate, certs.PrivateKey]:
        cf, kf = p1.credentials.cert_file, p1.credentials.key_file
        if not cf or not kf:
            raise certs.AuthError(f"tunnel {p1.name} uses certificates but has no certificate or key file")
        if (cf, kf) not in self._own_cache:
            cert = certs.load_certificate(cf)
            key = certs.load_private_key(kf)
            fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
                raise certs.AuthError(f"private key {kf} does not belong to certificate {cf}")
            self._own_cache[(cf, kf)] = (cert, key)
        return self._own_cache[(cf, kf)]

    def establish_ike(self, sa: IkeSa, now: float, initial_contact: bool = False) -> None:
        self.set_state(sa, IkeState.ESTABLISHED)
        sa.half_open_deadline = None
        self._announce(sa, now, initial_contact)

    def _announce(self, sa: IkeSa, now: float, initial_contact: bool = False) -> None:
        assert sa.phase1 is not None and sa.proposal is not None
        life = float(sa.phase1.policy.lifetime_s)
        margin = self.settings.rekey_margin if sa.initiator else self.settings.rekey_margin / 2
        sa.rekey_at = now + life * (1 - margin)
        sa.expire_at = now + life
        sa.last_heard = now
        sa.announced = True
        self.sa = sa
        self.phase1 = sa.phase1
        assert sa.local_id is not None and sa.remote_id is not None
        self.emit(
            IkeSaEstablished(
                sa_id=sa.sa_id,
                version=2,
                role=Role.INITIATOR if sa.initiator else Role.RESPONDER,
                phase1=sa.phase1,
                local=sa.local,
                remote=sa.remote,
                local_id=sa.local_id,
                remote_id=sa.remote_id,
                proposal=sa.proposal,
                spi_i=sa.spi_i,
                spi_r=sa.spi_r,
                lifetime_s=sa.phase1.policy.lifetime_s,
                nat_local=sa.nat_local,
                nat_remote=sa.nat_remote,
                rekey_of=sa.rekey_of,
                initial_contact=initial_contact,
            )
        )

    def inherit(self, old: IkeSa, new: IkeSa) -> None:
        for name in (
            "phase1",
            "candidates",
            "local_id",
            "remote_id",
            "local",
            "remote",
            "nat_local",
            "nat_remote",
            "force_encap",
            "peer_fragmentation",
            "peer_hashes",
            "initial_contact_sent",
        ):
            setattr(new, name, getattr(old, name))

    def complete_ike_rekey(self, old: IkeSa, new: IkeSa, now: float) -> None:
        """`new` replaces `old`: the children and pending work move over, `old` waits for its Delete."""
        self.inherit(old, new)
        new.children.update(old.children)
        old.children.clear()
        keep: deque[Task] = deque()
        for t in old.tasks:
            (keep if isinstance(t, DeleteIke) else new.tasks).append(t)
        new.tasks = deque(t for t in new.tasks if not isinstance(t, IkeRekey))
        old.tasks = keep
        self.set_state(old, IkeState.REKEYED)
        old.successor = new
        new.rekey_of = old.sa_id
        self._announce(new, now)
        self._kick(new, now)

    def note_deleted_early(self, spi: bytes, now: float) -> None:
        for k in [k for k, t in self._deleted_early.items() if now - t > 300]:
            del self._deleted_early[k]
        if len(self._deleted_early) < 256:
            self._deleted_early[spi] = now

    def deleted_early(self, spi: bytes) -> bool:
        return self._deleted_early.pop(spi, None) is not None

    def live_sa(self, sa: IkeSa) -> IkeSa:
        """The IKE SA that now holds `sa`'s children: itself, or the one(s) that replaced it."""
        while sa.successor is not None and sa.successor.state is not IkeState.DEAD:
            sa = sa.successor
        return sa

    def find_child(self, child_id: int) -> ChildSa | None:
        """A CHILD SA wherever it lives now (an IKE rekey moves children under exchanges in flight)."""
        for s in self._sas.values():
            c = s.children.get(child_id)
            if c is not None:
                return c
        return None

    def add_child(self, sa: IkeSa, child: ChildSa, now: float) -> None:
        sa = self.live_sa(sa)
        sa.children[child.child_id] = child
        child.watcher = weakref.WeakMethod(self._child_deadline_changed)
        self._child_deadline_changed(child)
        k = child.keys
        i_keys, r_keys = (k.encr_i, k.integ_i), (k.encr_r, k.integ_r)
        inbound, outbound = (r_keys, i_keys) if child.we_initiated else (i_keys, r_keys)
        p2 = child.phase2
        self.emit(
            ChildSaEstablished(
                child_id=child.child_id,
                sa_id=sa.sa_id,
                phase2=p2,
                role=Role.INITIATOR if child.we_initiated else Role.RESPONDER,
                protocol=child.protocol,
                mode=child.mode,
                proposal=child.proposal,
                inbound=ChildSaKeys(child.spi_in, *inbound),
                outbound=ChildSaKeys(child.spi_out, *outbound),
                local_ts=child.local_ts,
                remote_ts=child.remote_ts,
                local=sa.local,
                remote=sa.remote,
                udp_encap=sa.udp_encap,
                lifetime_s=p2.policy.lifetime_s,
                lifetime_kb=p2.policy.lifetime_kb,
                pfs_group=child.pfs_group,
                rekey_of=child.rekey_of,
            )
        )

    def remove_child(self, sa: IkeSa, child: ChildSa, reason: str) -> None:
        if child.state is ChildState.DELETED:
            return
        child.set_state(ChildState.DELETED)
        for s in self._sas.values():
            s.children.pop(child.child_id, None)
        _CHILD_SPIS.discard(child.spi_in)
        self.emit(ChildSaDeleted(child.child_id, reason))

    def child_by_outbound_spi(self, sa: IkeSa, spi: bytes) -> ChildSa | None:
        """The peer names a CHILD SA by its inbound SPI, our outbound one. Searched under every IKE SA
        of ours: a request may arrive on the IKE SA the child was moved away from by a rekey."""
        for s in (sa, *self._sas.values()):
            for c in s.children.values():
                if c.spi_out == spi:
                    return c
        return None

    def kill_sa(self, sa: IkeSa, reason: str, now: float, quiet: bool = False, dpd_action: str | None = None) -> None:
        """End `sa` here (no message): its children go with it (RFC 7296 §1.4.1)."""
        if sa.state is IkeState.DEAD:
            return
        heir = self.live_sa(sa) if sa.successor is not None and not self._closing else None
        if heir is not None and heir is not sa and heir.state is IkeState.ESTABLISHED:
            # Closed after a rekey with work unfinished (the peer deleted it under our request):
            # the work concerns children that now live under the new IKE SA, so it goes there.
            pending = ([sa.outstanding.task] if sa.outstanding is not None else []) + list(sa.tasks)
            for t in pending:
                fresh = None if isinstance(t, DeleteIke) else t.restart(self)
                if fresh is not None:
                    heir.tasks.append(fresh)
        for child in list(sa.children.values()):
            self.remove_child(sa, child, f"IKE SA closed: {reason}" if reason else "IKE SA closed")
        self.set_state(sa, IkeState.DEAD)
        sa.outstanding = None
        sa.tasks.clear()
        sa.response_cache = None
        sa.fragments.clear()
        if sa.announced and not quiet:
            self.emit(IkeSaDeleted(sa.sa_id, reason, dpd_action))
        self._sas.pop(sa.our_spi, None)
        _IKE_SPIS.discard(sa.our_spi)
        self.emit(SpiRemoved(sa.our_spi))
        if self.sa is sa:
            live = [s for s in self._sas.values() if s.state is IkeState.ESTABLISHED]
            self.sa = live[-1] if live else None
        if heir is not None and heir.tasks and heir.state is IkeState.ESTABLISHED:
            self._kick(heir, now)

    def tell_auth_failed(self, sa: IkeSa) -> None:
        """We reject the responder after it considers the IKE SA up: tell it once, unacknowledged
        (RFC 7296 §2.21.2), so it does not keep a dead SA until its liveness check."""
        if sa.out is None:
            return
        h = IkeHeader(sa.spi_i, sa.spi_r, 0, INFORMATIONAL, FLAG_INITIATOR if sa.initiator else 0, sa.next_msg_id)
        for d in self._protect(sa, h, [NotifyPayload(notify_type=n.AUTHENTICATION_FAILED)]):
            self.send_raw(d, sa.local, sa.remote)

    def peer_unreachable(self, sa: IkeSa, reason: str, now: float) -> None:
        if sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.HALF_OPEN):
            self.fail(sa, 1, f"peer {sa.remote[0]} did not answer: {reason}")
            return
        self._lost(sa, "peer unreachable", now)

    def dpd_failed(self, sa: IkeSa, now: float) -> None:
        self._lost(sa, "peer unreachable (DPD)", now)

    def _lost(self, sa: IkeSa, reason: str, now: float) -> None:
        # Only reported: what follows (clear, hold, restart with back-off) is the daemon's decision.
        p1 = sa.phase1 or self.phase1
        action = p1.policy.dpd_action.value if p1 is not None else None
        self._closing = True  # every IKE SA goes: no work moves between them
        try:
            for s in list(self._sas.values()):
                self.kill_sa(s, reason, now, dpd_action=action)
        finally:
            self._closing = False

    def _restart(self, now: float, old: IkeSa | None = None) -> None:
        if self._origin is None:
            ref = old or self.sa
            if ref is None:
                return
            self._origin = ((ref.local[0], 500), (ref.remote[0], 500))
        self.role = Role.INITIATOR
        self._start(now)

    # --- sending ----------------------------------------------------------------------------------

    def _kick(self, sa: IkeSa, now: float) -> None:
        while sa.outstanding is None and sa.tasks and sa.state is not IkeState.DEAD:
            task = sa.tasks[0]
            if sa.state not in task.runs_in:
                return
            sa.tasks.popleft()
            payloads = task.build_i(self, sa, now)
            if _dead(sa):
                return
            if payloads is not None:
                self._send_request(sa, task, payloads, now)

    def _send_request(self, sa: IkeSa, task: Task, payloads: list[Payload], now: float) -> None:
        h = IkeHeader(sa.spi_i, sa.spi_r, 0, task.exchange, FLAG_INITIATOR if sa.initiator else 0, sa.next_msg_id)
        if task.exchange == IKE_SA_INIT:
            data = [encode_plain(h, payloads)]
            sa.init_request = data[0]
        else:
            data = self._protect(sa, h, payloads)
        sa.outstanding = Outstanding(h.msg_id, data, task, now, now + self.settings.retransmit_timeout_s)
        for d in data:
            self.send_raw(d, sa.local, sa.remote)

    def _frag_limit(self, sa: IkeSa) -> int:
        ip = 40 if ":" in sa.remote[0] else 20
        marker = 4 if sa.remote[1] != 500 else 0
        return self.settings.fragment_size - ip - 8 - marker

    def _protect(self, sa: IkeSa, h: IkeHeader, payloads: list[Payload]) -> list[bytes]:
        assert sa.out is not None
        first, inner = encode_chain(payloads)
        data = sa.out.seal(h, first, inner)
        if sa.peer_fragmentation and self.settings.fragment_size > 0:
            limit = self._frag_limit(sa)
            if len(data) > limit:
                self.stats["fragmented"] += 1
                return sa.out.seal_fragments(h, first, inner, limit)
        return [data]

    # --- receiving --------------------------------------------------------------------------------

    def _lookup(self, h: IkeHeader) -> IkeSa | None:
        if h.from_initiator:
            if h.spi_r == ZERO_SPI:
                for cand in self._sas.values():
                    if not cand.initiator and cand.spi_i == h.spi_i:
                        return cand
                return None
            found = self._sas.get(h.spi_r)
            return found if found is not None and not found.initiator and found.spi_i == h.spi_i else None
        sa = self._sas.get(h.spi_i)
        if sa is None or not sa.initiator:
            return None
        if sa.state is not IkeState.INIT_SENT and sa.spi_r != h.spi_r:
            return None
        return sa

    def _receive(self, dg: Datagram, now: float) -> None:
        try:
            header, outer = decode_outer(dg.data)
        except DecodeError as e:
            self.drop(dg, f"malformed IKEv2 message: {e}")
            return
        sa = self._lookup(header)
        if sa is None:
            self.drop(
                dg,
                f"{_name(header.exchange)} message for an unknown IKE SA "
                f"(SPIs {header.spi_i.hex()}/{header.spi_r.hex()})",
            )
            return
        if header.exchange == IKE_SA_INIT:
            self._receive_init(sa, dg, header, outer, now)
            return
        enc = encrypted_part(outer)
        if enc is None or sa.inb is None:
            self.drop(dg, f"unprotected {_name(header.exchange)} message (only IKE_SA_INIT travels in clear)")
            return
        if header.is_response:
            self._receive_response(sa, dg, header, enc, now)
        else:
            self._receive_request(sa, dg, header, enc, now)

    def _receive_init(self, sa: IkeSa, dg: Datagram, h: IkeHeader, outer: list[Payload], now: float) -> None:
        if not h.is_response:
            if sa.state is IkeState.HALF_OPEN and h.msg_id == 0 and sa.response_cache is not None:
                self.stats["retransmitted requests answered"] += 1
                for _ in range(2):
                    for d in sa.response_cache[1]:
                        self.send_raw(d, dg.local, dg.remote)
            else:
                self.drop(dg, "IKE_SA_INIT request for an IKE SA past that stage")
            return
        o = sa.outstanding
        if sa.state is not IkeState.INIT_SENT or o is None or o.task.exchange != IKE_SA_INIT or h.msg_id != 0:
            self.drop(dg, "unexpected IKE_SA_INIT response")
            return
        for p in outer:
            if isinstance(p, UnknownPayload) and p.critical:
                self.drop(dg, f"IKE_SA_INIT response has unsupported critical payload type {p.ptype}")
                return
        self._complete(sa, Message(h, outer, dg.data), now)

    def _receive_response(self, sa: IkeSa, dg: Datagram, h: IkeHeader, enc: RawBody, now: float) -> None:
        o = sa.outstanding
        if o is None or h.msg_id != o.msg_id or h.exchange != o.task.exchange:
            self.drop(dg, f"{_name(h.exchange)} response with message ID {h.msg_id} matches no request of ours")
            return
        payloads = self._open(sa, dg, h, enc)
        if payloads is None:
            return
        for p in payloads:
            if isinstance(p, UnknownPayload) and p.critical:
                self.drop(dg, f"{_name(h.exchange)} response has unsupported critical payload type {p.ptype}")
                return
        self._update_peer_address(sa, dg)
        self._complete(sa, Message(h, payloads, dg.data), now)

    def _complete(self, sa: IkeSa, msg: Message, now: float) -> None:
        o = sa.outstanding
        assert o is not None
        sa.outstanding = None
        sa.last_heard = now
        # The exchange is over: tasks queued by process_i take the next message ID.
        sa.next_msg_id = o.msg_id + 1
        result = o.task.process_i(self, sa, msg, now)
        if _dead(sa):
            return
        if result is Result.RETRY:
            if o.task.exchange == IKE_SA_INIT:
                sa.next_msg_id = 0
            payloads = o.task.build_i(self, sa, now)
            if payloads is not None and not _dead(sa):
                self._send_request(sa, o.task, payloads, now)
            return
        self._kick(sa, now)

    def _receive_request(self, sa: IkeSa, dg: Datagram, h: IkeHeader, enc: RawBody, now: float) -> None:
        assert sa.inb is not None
        cache = sa.response_cache
        if cache is not None and h.msg_id == cache[0]:
            try:
                if enc.ptype == SKF and fragment_numbers(enc)[0] != 1:
                    return  # RFC 7383 §2.6.1: answer only the first fragment of a retransmission
                sa.inb.open(dg.data, enc)
            except (CryptoError, DecodeError) as e:
                self.drop(dg, f"retransmitted {_name(h.exchange)} request failed its integrity check: {e}")
                return
            self.stats["retransmitted requests answered"] += 1
            # Our response was probably lost: send it twice, which also breaks the lock-step where
            # a link that loses every other datagram would swallow each answer.
            for _ in range(2):
                for d in cache[1]:
                    self.send_raw(d, dg.local, dg.remote)
            return
        if h.msg_id != sa.peer_msg_id:
            self.drop(
                dg,
                f"{_name(h.exchange)} request with message ID {h.msg_id} is outside the window "
                f"(expected {sa.peer_msg_id}); replayed or out of order",
            )
            return
        payloads = self._open(sa, dg, h, enc)
        if payloads is None:
            return
        msg = Message(h, payloads, dg.data)
        self._update_peer_address(sa, dg)
        reply = self._dispatch(sa, dg, msg, now)
        if reply is None:
            return
        sa.last_heard = now
        rh = IkeHeader(
            sa.spi_i, sa.spi_r, 0, h.exchange, FLAG_RESPONSE | (FLAG_INITIATOR if sa.initiator else 0), h.msg_id
        )
        data = self._protect(sa, rh, reply.payloads)
        sa.response_cache = (h.msg_id, data)
        sa.peer_msg_id = h.msg_id + 1
        for d in data:
            self.send_raw(d, dg.local, dg.remote)
        for after in reply.after:
            after()
        if not _dead(sa):
            self._kick(sa, now)

    def _dispatch(self, sa: IkeSa, dg: Datagram, msg: Message, now: float) -> Reply | None:
        p = msg.unsupported_critical()
        if p is not None:
            self.drop(
                dg,
                f"{_name(msg.header.exchange)} request has unsupported critical payload type "
                f"{p.ptype} (answered UNSUPPORTED_CRITICAL_PAYLOAD)",
            )
            return Reply([NotifyPayload(notify_type=n.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes([p.ptype]))])
        ex = msg.header.exchange
        if ex not in REQUESTS_ACCEPTED[sa.state]:
            self.drop(dg, f"{_name(ex)} request while the IKE SA is {sa.state.value}")
            return None
        if ex == IKE_AUTH:
            return ike_auth.process_r(self, sa, msg, now)
        if ex == CREATE_CHILD_SA:
            if sa.state is not IkeState.ESTABLISHED:
                return Reply([NotifyPayload(notify_type=n.TEMPORARY_FAILURE)])
            if ike_rekey.is_ike_rekey(msg):
                # Taken even when not refreshing: the new IKE SA carries the children to their expiry.
                return ike_rekey.process_r(self, sa, msg, now)
            if not self._refresh:
                # Phase 1 removed (stop_refreshing): no new child SA and no child rekey, ours or the
                # peer's; the peer keeps its SAs until they expire (strongSwan retries until then).
                self.stats["CREATE_CHILD_SA refused (not refreshing)"] += 1
                return Reply([NotifyPayload(notify_type=n.NO_ADDITIONAL_SAS)])
            rekey = msg.notify(n.REKEY_SA)
            if rekey is not None:
                return child_rekey.process_r(self, sa, msg, rekey, now)
            return child_create.process_r(self, sa, msg, now)
        if ex == INFORMATIONAL:
            if msg.get(DeletePayload) is not None:
                return delete.process_r(self, sa, msg, now)
            err = msg.error_notify()
            if err is not None:
                self.emit_failed(
                    1,
                    f"peer reported {n.notify_name(err.notify_type)}",
                    phase1=sa.phase1,
                    notify=n.notify_name(err.notify_type),
                )
                if err.notify_type in (n.AUTHENTICATION_FAILED, n.INVALID_SYNTAX):
                    return Reply([], [lambda: self.kill_sa(sa, f"peer reported {n.notify_name(err.notify_type)}", now)])
            return dpd.process_r(self, sa, msg, now)
        self.drop(dg, f"unknown exchange type {ex}")
        return None

    def _open(self, sa: IkeSa, dg: Datagram, h: IkeHeader, enc: RawBody) -> list[Payload] | None:
        assert sa.inb is not None

        def what() -> str:  # only built for a drop report
            return f"{_name(h.exchange)} {'response' if h.is_response else 'request'} {h.msg_id}"

        try:
            plain = sa.inb.open(dg.data, enc)
            first = enc.inner_next
            if enc.ptype == SKF:
                num, total = fragment_numbers(enc)
                if total > MAX_FRAGMENTS:
                    self.drop(dg, f"{what()}: {total} fragments is more than the {MAX_FRAGMENTS} we accept")
                    return None
                key = (h.is_response, h.msg_id)
                frags = sa.fragments.setdefault(key, {})
                if frags and sa.fragment_total.get(key) != total:
                    frags.clear()
                sa.fragment_total[key] = total
                frags[num] = plain
                if num == 1:
                    sa.fragment_first[key] = enc.inner_next
                for stale in [k for k in sa.fragments if k[0] == key[0] and k[1] < h.msg_id]:
                    sa.fragments.pop(stale, None)
                    sa.fragment_first.pop(stale, None)
                    sa.fragment_total.pop(stale, None)
                if len(frags) < total:
                    return None
                plain = b"".join(frags[i] for i in range(1, total + 1))
                first = sa.fragment_first.pop(key, 0)
                sa.fragments.pop(key, None)
                sa.fragment_total.pop(key, None)
                self.stats["reassembled"] += 1
            return decode_chain(first, plain)
        except (CryptoError, DecodeError) as e:
            self.drop(dg, f"{what()}: {e}")
            return None

    def _update_peer_address(self, sa: IkeSa, dg: Datagram) -> None:
        # §2.23: behind a NAT the peer's address may change; follow authenticated messages only.
        if sa.udp_encap or dg.local[1] == 4500:
            sa.remote = dg.remote
            sa.local = dg.local

    # --- timers -----------------------------------------------------------------------------------

    def _deadlines(self, sa: IkeSa) -> list[float]:
        out: list[float] = []
        if sa.outstanding is not None:
            out.append(sa.outstanding.deadline)
        if sa.half_open_deadline is not None:
            out.append(sa.half_open_deadline)
        if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED):
            if sa.expire_at is not None:
                out.append(sa.expire_at)
            if sa.state is IkeState.ESTABLISHED:
                if sa.rekey_at is not None and self._refresh:
                    out.append(sa.rekey_at)
                delay = sa.phase1.policy.dpd_delay_s if sa.phase1 else 0
                if delay and sa.outstanding is None and not sa.tasks and sa is self.sa:
                    out.append(sa.last_heard + delay)
        return out  # children's deadlines live in self._child_deadlines

    def _timers(self, now: float) -> None:
        for sa in list(self._sas.values()):
            if sa.state is IkeState.DEAD:
                continue
            o = sa.outstanding
            if o is not None and now >= o.deadline:
                if o.tries >= self.settings.retransmit_tries:
                    sa.outstanding = None
                    o.task.give_up(self, sa, now)
                    continue
                o.tries += 1
                self.stats["retransmissions"] += 1
                o.deadline = now + self.settings.retransmit_timeout_s * (2**o.tries)
                for d in o.datagrams:
                    self.send_raw(d, sa.local, sa.remote)
            if sa.half_open_deadline is not None and now >= sa.half_open_deadline:
                self.fail(sa, 1, f"peer {sa.remote[0]} did not complete IKE_AUTH in time (half-open SA expired)")
                continue
            if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED):
                self._sa_lifetimes(sa, now)
            if not _dead(sa):
                self._kick(sa, now)

    def _sa_lifetimes(self, sa: IkeSa, now: float) -> None:
        if sa.expire_at is not None and now >= sa.expire_at:
            sa.expire_at = None
            sa.rekey_at = None
            sa.tasks.appendleft(DeleteIke("expired"))
            return
        if sa.state is IkeState.ESTABLISHED:
            if sa.rekey_at is not None and self._refresh and now >= sa.rekey_at:
                sa.rekey_at = None
                self.queue(sa, IkeRekey(), now)
            delay = sa.phase1.policy.dpd_delay_s if sa.phase1 else 0
            if delay and sa is self.sa and sa.outstanding is None and not sa.tasks and now >= sa.last_heard + delay:
                self.stats["liveness checks"] += 1
                self.queue(sa, Dpd(), now)
        for c in list(sa.children.values()):
            if c.state in (ChildState.DELETING, ChildState.DELETED):
                continue
            if now >= c.expire_at:
                c.expire_at = float("inf")
                self.queue(sa, DeleteChild(c.child_id, "expired"), now)
            elif self._refresh and c.state is ChildState.INSTALLED and c.rekey_at is not None and now >= c.rekey_at:
                c.rekey_at = None
                self.queue(sa, ChildRekey(c.child_id), now)

    def _guarded(self, fn: object, now: float) -> None:
        self._now = now
        try:
            fn(now)  # type: ignore[operator]
        except Exception as e:
            self.stats["internal errors"] += 1
            remote = self.sa.remote if self.sa is not None else ("", 0)
            self.emit(PacketDropped(f"internal error ({type(e).__name__}: {e})", remote))
