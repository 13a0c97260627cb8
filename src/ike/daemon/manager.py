"""The tunnel manager: drives the sans-IO engines and keeps the active-tunnel table.

- Engines are found by our SPI (`by_spi`, a dict) or, for a new negotiation's first message, by
  (peer address, peer SPI) (`half_open`); never by scanning.
- Each engine has at most one pending loop.call_at for its own deadline; asyncio's heap orders them.
- Events become table updates and data plane calls. The data plane sees child SAs under a
  daemon-wide id (engines number their children locally, so two engines can both have child 1).
- Active tunnels are numbered by the manager, phase 1 and phase 2 separately, initiator and
  responder alike (the AIX manual: these numbers are not the database's), and never reused while
  the daemon runs, so a number in a script cannot silently come to mean another tunnel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ike.daemon.policies import ActivationTarget, IndexedPolicies
from ike.policy import DpdAction, Phase1Tunnel, Phase2Tunnel, TrafficSelector
from ike.proto import secretcache
from ike.proto.api import (
    Address,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaKeys,
    Datagram,
    Demux,
    Engine,
    EngineSettings,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    PacketDropped,
    Role,
    SpiAdded,
    SpiRemoved,
)

log = logging.getLogger("ike.daemon.manager")

MAX_DEAD_ENTRIES = 200  # failed/expired tunnels kept for `ike cmd=list` until removed
HALF_OPEN_TIMEOUT_S = 60.0  # a responder that is not established by then is dropped
RESTART_DELAY_S = 2.0  # first retry after a peer was lost with dpd_action=restart; doubles each try
RESTART_MAX_DELAY_S = 60.0
DELETE_GRACE_S = 30.0
LIVENESS_FEED_S = 5.0  # an engine that has not finished a requested delete by then is dropped


class EngineFactory(Protocol):
    """How the manager makes engines; ike.daemon.engines adapts the real IKEv1/IKEv2 engines."""

    def demux(self, data: bytes) -> Demux | None: ...

    def initiate(
        self,
        phase1: Phase1Tunnel,
        children: list[Phase2Tunnel],
        local: Address,
        remote: Address,
        now: float,
        initial_contact: bool = True,
    ) -> tuple[Engine, list[Phase2Tunnel]]:
        """A new initiating engine, and those of `children` it took on itself (IKEv2 carries the
        first in IKE_AUTH; IKEv1 queues them all behind phase 1). The manager starts the rest
        with start_child once phase 1 is up. `initial_contact`: we hold nothing with this peer, so
        the engine may tell it to drop what it still holds with us."""
        ...

    def respond(self, version: int, dg: Datagram, now: float) -> tuple[Engine | None, list[Datagram], list[Event]]:
        """A responder that has already processed `dg`; or None with what was sent and reported
        without keeping state (error notifies, cookie requests)."""
        ...


class DataPlane(Protocol):
    def install(self, child: ChildSaEstablished) -> None: ...

    def remove(self, child_id: int) -> None: ...

    def counters(self, child_id: int) -> Any: ...

    def trap(self, trap_id: int, local_ts: list[TrafficSelector], remote_ts: list[TrafficSelector]) -> None: ...

    def untrap(self, trap_id: int) -> None: ...


class ManagerError(ValueError):
    """A request that names something that does not exist; goes back to `ike` as is."""


# --- the active-tunnel table ----------------------------------------------------------------------

LIVE = ("negotiating", "established")


@dataclass
class P1Entry:
    number: int
    role: Role
    definition: Phase1Tunnel | None
    local: Address
    remote: Address
    version: int
    state: str = "negotiating"  # negotiating | established | failed | deleted | expired
    slot: Slot | None = None
    sa_id: int | None = None
    local_id: str = ""
    remote_id: str = ""
    proposal: str = ""
    spi_i: str = ""
    spi_r: str = ""
    lifetime_s: int = 0
    established_at: float | None = None  # loop time
    established_wall: float | None = None
    nat_local: bool = False
    nat_remote: bool = False
    rekeys: int = 0
    last_error: str | None = None
    offered: tuple[str, ...] = ()
    peer_offered: tuple[str, ...] = ()
    notify: str | None = None
    children: dict[int, P2Entry] = field(default_factory=dict)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    removing: bool = False
    # IKEv1 renewals by the peer come to a new responder engine (new cookies): the engines that
    # still hold this tunnel's older ISAKMP SA or phase 2 SAs not yet replaced under the new one.
    old_slots: list[Slot] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass
class P2Entry:
    number: int
    role: Role
    definition: Phase2Tunnel | None
    p1: P1Entry | None
    state: str = "negotiating"
    slot: Slot | None = None
    child_id: int | None = None  # the newest SA's (what list shows and what gets rekeyed)
    dp_id: int | None = None
    # Every live SA of this tunnel, oldest first: during a rekey (or after a simultaneous one)
    # old and new overlap. child_id -> data plane id.
    sas: dict[int, int | None] = field(default_factory=dict)
    shown: dict[int, ChildSaEstablished] = field(default_factory=dict)  # child_id -> its event, keys blanked
    totals: dict[str, int] = field(default_factory=dict)  # counters of SAs already gone
    packets_seen_at: float | None = None  # the data plane's last_used, as last told to the engine
    protocol: str = ""
    mode: str = ""
    proposal: str = ""
    pfs_group: int = 0
    spi_in: str = ""
    spi_out: str = ""
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    local: Address | None = None
    remote: Address | None = None
    udp_encap: bool = False
    lifetime_s: int = 0
    lifetime_kb: int = 0
    established_at: float | None = None
    established_wall: float | None = None
    rekeys: int = 0
    refresh: bool = True  # False once its phase 1 is removed: it runs until it expires
    last_error: str | None = None
    offered: tuple[str, ...] = ()
    peer_offered: tuple[str, ...] = ()
    notify: str | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    removing: bool = False

    @property
    def live(self) -> bool:
        return self.state in LIVE


class _Ended:
    """What a dropped slot holds in place of its engine. Its tunnels stay listed as ended (up to
    MAX_DEAD_ENTRIES per phase) and point at the slot; the engine, with every key of its IKE SA and
    child SAs, must not stay in memory with them. Calls on a dead slot are refused before they get
    here; should one slip through, it finds nothing to do."""

    __slots__ = ("role",)

    def __init__(self, role: Role) -> None:
        self.role = role

    def receive_datagram(self, dg: Datagram, now: float) -> None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def get_timer(self) -> float | None:
        return None

    def datagrams_to_send(self) -> list[Datagram]:
        return []

    def next_event(self) -> Event | None:
        return None

    def start_child(self, phase2: Phase2Tunnel, now: float) -> None:
        return None

    def rekey_child(self, child_id: int, now: float) -> None:
        return None

    def delete_child(self, child_id: int, now: float) -> None:
        return None

    def delete(self, now: float) -> None:
        return None

    def is_established(self) -> bool:
        return False

    def is_finished(self) -> bool:
        return True


@dataclass(eq=False)
class Slot:
    """One engine and the daemon's bookkeeping around it."""

    id: int
    engine: Engine
    version: int
    role: Role
    remote: Address
    ike_alive: bool = True
    spis: set[bytes] = field(default_factory=set)
    half_open_key: tuple[Address, bytes] | None = None
    half_open_timer: asyncio.TimerHandle | None = None  # cancelled once established or dropped
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None
    p1_pending: P1Entry | None = None
    p1_by_sa: dict[int, P1Entry] = field(default_factory=dict)
    p2_pending: dict[int, list[P2Entry]] = field(default_factory=dict)
    p2_by_child: dict[int, P2Entry] = field(default_factory=dict)
    queued_children: list[Phase2Tunnel] = field(default_factory=list)
    dead: bool = False
    pumping: bool = False
    # IKEv2 phase 1 removed by the administrator while phase 2 SAs ran under it: the IKE SA stays,
    # unlisted, only so that they run on until they expire (child SAs cannot outlive it).
    detached: bool = False
    # We are behind a NAT (RFC 3948 §2.3): 0xff keepalives keep the NAT's mapping for the peer.
    keepalive: asyncio.TimerHandle | None = None
    keepalive_path: tuple[Address, Address] | None = None  # (local, remote) of the newest IKE SA
    renewed: P1Entry | None = None  # IKEv1: the tunnel whose ISAKMP SA the peer renewed elsewhere


@dataclass
class Hold:
    """dpd_action=hold: a tunnel whose peer became unreachable, its phase 2 selectors trapped in the
    data plane until a packet for them re-activates it (strongSwan's dpd_action=trap)."""

    target: ActivationTarget
    traps: dict[int, int]  # phase 2 definition number -> trap id
    entry: int  # the ended phase 1 tunnel's active number (its listing says it is held)


@dataclass
class Stats:
    datagrams_in: int = 0
    datagrams_unmatched: int = 0
    packets_dropped: int = 0
    engine_errors: int = 0
    keepalives_sent: int = 0


# --- the manager -----------------------------------------------------------------------------------


class TunnelManager:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        policies: IndexedPolicies,
        factory: EngineFactory,
        send: Callable[[Datagram], None],
        dataplane: DataPlane | None = None,
        policy_loader: Callable[[], IndexedPolicies] | None = None,
        *,
        send_keepalive: Callable[[Address, Address], None] | None = None,
        nat_keepalive_s: float = EngineSettings.nat_keepalive_s,
    ) -> None:
        self.loop = loop
        self.policies = policies
        self.factory = factory
        self.send = send
        self.dataplane = dataplane
        self.policy_loader = policy_loader
        self.send_keepalive = send_keepalive
        self.nat_keepalive_s = nat_keepalive_s
        self.stats = Stats()
        self.by_spi: dict[bytes, Slot] = {}
        self.half_open: dict[tuple[Address, bytes], Slot] = {}
        self.slots: dict[int, Slot] = {}
        self._slots_by_peer: dict[str, int] = {}  # peer address -> engines we hold with it
        self.p1: dict[int, P1Entry] = {}
        self.p2: dict[int, P2Entry] = {}
        self.p1_live_by_def: dict[int, P1Entry] = {}
        # (definition, peer address) -> its live tunnel: a definition with a wildcard remote has
        # one per peer (ipaddr= starts them), p1_live_by_def only the first.
        self._p1_by_def_peer: dict[tuple[int, str], P1Entry] = {}
        self.p2_live_by_def: dict[int, P2Entry] = {}
        self.p2_by_dp: dict[int, tuple[P2Entry, int]] = {}  # data plane id -> (tunnel, child_id)
        self._next_slot = 1
        self._next_p1 = 1
        self._next_p2 = 1
        self._next_dp = 1
        self._closing = False
        # dpd_action=restart: phase 1 definition number -> (what to activate, tries so far, pending retry)
        self._restarts: dict[int, tuple[ActivationTarget, int, asyncio.TimerHandle]] = {}
        # dpd_action=hold: phase 1 definition number -> its hold; trap id -> that number
        self._holds: dict[int, Hold] = {}
        self._trap_owner: dict[int, int] = {}
        self._held_p2: dict[int, int] = {}  # phase 2 definition number -> its hold's phase 1 number
        self._next_trap = 1
        self._stateless_failed: dict[tuple[Address, bytes], bool] = {}
        self._graveyard_p1: deque[int] = deque()
        self._graveyard_p2: deque[int] = deque()
        self._established_by_peer: dict[tuple[str, str], set[int]] = {}  # (remote ip, remote id) -> P1 numbers

    def now(self) -> float:
        return self.loop.time()

    def reload_policies(self) -> None:
        """Take the loader's current view (it re-reads the database only when the file changed)."""
        if self.policy_loader is None:
            return
        new = self.policy_loader()
        if new is not self.policies:
            self.policies = new
            secretcache.forget_all()  # a key or PSK whose definition went must not outlive it here
            setter = getattr(self.factory, "set_policies", None)
            if callable(setter):
                setter(new)

    # --- datagrams in ---------------------------------------------------------------------------

    def receive(self, data: bytes, local: Address, remote: Address) -> None:
        """An IKE message (marker already stripped) from the UDP layer."""
        self.stats.datagrams_in += 1
        try:
            dmx = self.factory.demux(data)
        except Exception:
            log.exception("demultiplexing a datagram from %s failed", remote[0])
            dmx = None
        if dmx is None:
            self.stats.datagrams_unmatched += 1
            log.debug("dropped %d bytes from %s:%d: not an IKE message we understand", len(data), *remote)
            return
        dg = Datagram(data, local, remote)
        slot: Slot | None = None
        if dmx.our_spi is not None:
            slot = self.by_spi.get(dmx.our_spi)
        if slot is None:
            # IKEv1 headers do not say which cookie is ours: for SAs we initiated it is CKY-I,
            # which demux reports as the peer's.
            slot = self.by_spi.get(dmx.peer_spi)
        if slot is None:
            slot = self.half_open.get((remote, dmx.peer_spi))
        if slot is None:
            if dmx.our_spi is not None and any(dmx.our_spi):
                self.stats.datagrams_unmatched += 1
                log.debug("dropped a message from %s for an SA we do not have", remote[0])
                return
            slot = self._new_responder(dmx, dg)
            if slot is not None:
                self._pump(slot)  # respond() has already taken the first message
            return
        self._call(slot, lambda e: e.receive_datagram(dg, self.now()))

    def _new_responder(self, dmx: Demux, dg: Datagram) -> Slot | None:
        if self._closing:
            return None
        try:
            self.reload_policies()  # one stat() per new negotiation: definitions put since start count
        except Exception as e:
            log.error("cannot re-read the tunnel database: %s; answering with the definitions loaded before", e)
        try:
            engine, sent, events = self.factory.respond(dmx.version, dg, self.now())
        except Exception:
            self.stats.engine_errors += 1
            log.exception("creating a responder for %s failed", dg.remote[0])
            return None
        if engine is None:
            # Answered without keeping state (an error notify, a cookie request) or ignored.
            for out in sent:
                self.send(out)
            for ev in events:
                self._stateless_event(ev, dmx.version, dg, dmx.peer_spi)
            if not sent and not events:
                self.stats.datagrams_unmatched += 1
            return None
        slot = self._add_slot(engine, dmx.version, Role.RESPONDER, dg.remote)
        slot.half_open_key = (dg.remote, dmx.peer_spi)
        self.half_open[slot.half_open_key] = slot
        # Cancelled as soon as the negotiation completes or ends: a pending handle holds the slot
        # (its engine and keys) for the full timeout, and at a thousand negotiations a second that
        # was tens of thousands of dead slots kept in memory for the garbage collector to walk.
        slot.half_open_timer = self.loop.call_later(HALF_OPEN_TIMEOUT_S, self._half_open_expired, slot)
        return slot

    def _stateless_event(self, ev: Event, version: int, dg: Datagram, peer_spi: bytes) -> None:
        if isinstance(ev, NegotiationFailed):
            key = (dg.remote, peer_spi)
            if key in self._stateless_failed:
                return  # a retransmission of a request already refused and recorded
            if len(self._stateless_failed) > 4 * MAX_DEAD_ENTRIES:
                self._stateless_failed.clear()
            self._stateless_failed[key] = True
            e = P1Entry(self._next_p1, Role.RESPONDER, ev.phase1, dg.local, dg.remote, version)
            self._next_p1 += 1
            self.p1[e.number] = e
            self._p1_fail(e, ev.reason, offered=ev.offered, peer_offered=ev.peer_offered, notify=ev.notify)
        elif isinstance(ev, PacketDropped):
            self.stats.packets_dropped += 1
            log.debug("dropped a message from %s: %s", ev.remote[0], ev.reason)

    def _end_half_open(self, slot: Slot) -> None:
        """The responder's negotiation completed or ended: it no longer answers retransmitted first
        messages, and its timeout goes (a pending handle holds the slot, engine and keys with it)."""
        if slot.half_open_key is not None:
            if self.half_open.get(slot.half_open_key) is slot:
                del self.half_open[slot.half_open_key]
            slot.half_open_key = None
        if slot.half_open_timer is not None:
            slot.half_open_timer.cancel()
            slot.half_open_timer = None

    def _half_open_expired(self, slot: Slot) -> None:
        slot.half_open_timer = None
        if slot.dead or slot.p1_by_sa:
            return
        log.info("negotiation from %s did not complete within %.0f s; dropped", slot.remote[0], HALF_OPEN_TIMEOUT_S)
        self._drop_slot(slot, "negotiation did not complete")

    def _add_slot(self, engine: Engine, version: int, role: Role, remote: Address) -> Slot:
        slot = Slot(self._next_slot, engine, version, role, remote)
        self._next_slot += 1
        self.slots[slot.id] = slot
        self._slots_by_peer[remote[0]] = self._slots_by_peer.get(remote[0], 0) + 1
        return slot

    # --- driving engines ------------------------------------------------------------------------

    def _call(self, slot: Slot, fn: Callable[[Engine], None]) -> None:
        if slot.dead:
            return
        try:
            fn(slot.engine)
        except Exception as e:
            # The contract says nothing raises out of an engine; if something does, this one
            # association ends and everything else goes on.
            self.stats.engine_errors += 1
            log.exception("IKE engine for %s failed", slot.remote[0])
            self._engine_failed(slot, f"internal error in the IKE engine: {e}")
            return
        self._pump(slot)

    def _pump(self, slot: Slot) -> None:
        if slot.pumping or slot.dead:
            return
        slot.pumping = True
        try:
            for _ in range(1000):  # events can cause calls that make more output
                progressed = False
                for dg in slot.engine.datagrams_to_send():
                    progressed = True
                    self.send(dg)
                while (ev := slot.engine.next_event()) is not None:
                    progressed = True
                    self._on_event(slot, ev)
                    if slot.dead:
                        return
                if not progressed:
                    break
        except Exception as e:
            self.stats.engine_errors += 1
            log.exception("handling output of the IKE engine for %s failed", slot.remote[0])
            slot.pumping = False
            self._engine_failed(slot, f"internal error: {e}")
            return
        finally:
            slot.pumping = False
        if self._finished(slot):
            self._drop_slot(slot, None)
        else:
            self._schedule(slot)

    def _schedule(self, slot: Slot) -> None:
        try:
            deadline = slot.engine.get_timer()
        except Exception:
            deadline = None
        if deadline == slot.deadline and (slot.timer is not None or deadline is None):
            return
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.deadline = deadline
        if deadline is not None:
            slot.timer = self.loop.call_at(max(deadline, self.now()), self._timer_fired, slot)

    def _timer_fired(self, slot: Slot) -> None:
        slot.timer = None
        slot.deadline = None
        self._call(slot, lambda e: e.handle_timer(self.now()))

    def _finished(self, slot: Slot) -> bool:
        done = getattr(slot.engine, "finished", None)
        is_finished = getattr(slot.engine, "is_finished", None)
        if callable(is_finished):
            done = bool(is_finished())
        if isinstance(done, bool):
            # The engine knows best (IKEv1 keeps phase 2 SAs after its ISAKMP SA is gone).
            return done and slot.p1_pending is None and not any(slot.p2_pending.values())
        if slot.ike_alive:
            return False
        return not any(e.live for e in slot.p2_by_child.values()) and not any(slot.p2_pending.values())

    def _drop_slot(self, slot: Slot, reason: str | None) -> None:
        if slot.dead:
            return
        slot.dead = True
        if slot.timer is not None:
            slot.timer.cancel()
        if slot.keepalive is not None:
            slot.keepalive.cancel()
            slot.keepalive = None
        for spi in slot.spis:
            if self.by_spi.get(spi) is slot:
                del self.by_spi[spi]
        self._end_half_open(slot)
        if self.slots.pop(slot.id, None) is not None:
            n = self._slots_by_peer.get(slot.remote[0], 0) - 1
            if n > 0:
                self._slots_by_peer[slot.remote[0]] = n
            else:
                self._slots_by_peer.pop(slot.remote[0], None)
        why = reason or "IKE association ended"
        if slot.p1_pending is not None:
            self._p1_fail(slot.p1_pending, why)
        for entries in slot.p2_pending.values():
            for p2e in entries:
                self._p2_fail(p2e, why)
        slot.p2_pending.clear()
        for p2e in list(slot.p2_by_child.values()):
            if p2e.live:
                self._p2_gone(p2e, why)
        for p1e in slot.p1_by_sa.values():
            if p1e.slot is slot and (p1e.live or p1e.state == "deleting"):
                self._p1_gone(p1e, why)  # not a tunnel renewed under another engine: it goes on there
        if slot.renewed is not None and slot in slot.renewed.old_slots:
            slot.renewed.old_slots.remove(slot)
        # The tunnels it carried keep pointing at it (entry.slot) while they are listed as ended;
        # its own links back to them are done with. Left in place they made a reference cycle per
        # negotiation, so every dropped engine, keys included, waited for the garbage collector
        # (about 12 % of a busy responder's CPU went to collecting them).
        slot.p1_by_sa = {}
        slot.p2_by_child = {}
        slot.p1_pending = None
        slot.renewed = None
        slot.engine = _Ended(slot.role)

    def _engine_failed(self, slot: Slot, reason: str) -> None:
        self._drop_slot(slot, reason)

    # --- events ---------------------------------------------------------------------------------

    def _on_event(self, slot: Slot, ev: Event) -> None:
        if isinstance(ev, SpiAdded):
            slot.spis.add(ev.spi)
            self.by_spi[ev.spi] = slot
        elif isinstance(ev, SpiRemoved):
            slot.spis.discard(ev.spi)
            if self.by_spi.get(ev.spi) is slot:
                del self.by_spi[ev.spi]
        elif isinstance(ev, IkeSaEstablished):
            self._on_ike_up(slot, ev)
        elif isinstance(ev, IkeSaDeleted):
            self._on_ike_down(slot, ev)
        elif isinstance(ev, ChildSaEstablished):
            self._on_child_up(slot, ev)
        elif isinstance(ev, ChildSaDeleted):
            self._on_child_down(slot, ev)
        elif isinstance(ev, NegotiationFailed):
            self._on_failed(slot, ev)
        elif isinstance(ev, PacketDropped):
            self.stats.packets_dropped += 1
            log.debug("dropped a message from %s: %s", ev.remote[0], ev.reason)

    def _on_ike_up(self, slot: Slot, ev: IkeSaEstablished) -> None:
        now = self.now()
        entry: P1Entry | None = None
        if ev.rekey_of is not None:
            entry = slot.p1_by_sa.get(ev.rekey_of)
            if entry is not None:
                entry.rekeys += 1
        if entry is None and slot.p1_pending is not None:
            entry = slot.p1_pending
            slot.p1_pending = None
        initial_contact = bool(getattr(ev, "initial_contact", False)) and ev.rekey_of is None
        renewed_from: Slot | None = None
        if entry is None and ev.version == 1 and not initial_contact:
            entry = self._v1_renewal_of(slot, ev)
            if entry is not None:
                entry.rekeys += 1
                renewed_from = entry.slot
        if entry is None:
            entry = self._new_p1(ev.role, ev.phase1, ev.local, ev.remote, ev.version, slot)
        entry.slot = slot
        entry.sa_id = ev.sa_id
        entry.state = "established"
        self._cancel_restart(ev.phase1)
        entry.definition = ev.phase1
        entry.local, entry.remote = ev.local, ev.remote
        entry.local_id, entry.remote_id = str(ev.local_id), str(ev.remote_id)
        entry.proposal = str(ev.proposal)
        entry.spi_i, entry.spi_r = ev.spi_i.hex(), ev.spi_r.hex()
        entry.lifetime_s = ev.lifetime_s
        entry.established_at, entry.established_wall = now, time.time()
        entry.nat_local, entry.nat_remote = ev.nat_local, ev.nat_remote
        entry.last_error = None
        slot.p1_by_sa[ev.sa_id] = entry
        slot.remote = ev.remote
        if renewed_from is not None and renewed_from is not slot and not renewed_from.dead:
            renewed_from.renewed = entry
            if renewed_from not in entry.old_slots:
                entry.old_slots.append(renewed_from)
            self._move_initiated_children(renewed_from, entry)
        self._nat_keepalives(slot, ev)
        if slot.detached:
            return  # an unlisted IKE SA kept for its children (see _remove_p1): rekeyed, not revived
        peer = (ev.remote[0], entry.remote_id)
        if initial_contact:
            # The peer restarted (RFC 7296 §2.4): whatever we still hold with it is stale.
            for n in list(self._established_by_peer.get(peer, ())):
                old = self.p1.get(n)
                if old is not None and old.slot is not None and old.slot is not slot and not old.slot.dead:
                    log.info("phase 1 tunnel %d: peer %s restarted (INITIAL_CONTACT); dropped", n, ev.remote[0])
                    for s in [*old.old_slots, old.slot]:
                        self._drop_slot(s, "peer restarted (INITIAL_CONTACT)")
        self._established_by_peer.setdefault(peer, set()).add(entry.number)
        if ev.phase1 is not None and ev.phase1.number not in self.p1_live_by_def:
            self.p1_live_by_def[ev.phase1.number] = entry
        if ev.phase1 is not None:
            known = self._p1_by_def_peer.get((ev.phase1.number, ev.remote[0]))
            if known is None or not known.live:
                self._p1_by_def_peer[(ev.phase1.number, ev.remote[0])] = entry
        self._end_half_open(slot)
        _resolve(entry.waiters)
        verb = "rekeyed" if ev.rekey_of is not None or renewed_from is not None else "established"
        log.info(
            "phase 1 tunnel %d %s: IKEv%d %s %s[%s] <-> %s[%s] %s",
            entry.number,
            verb,
            ev.version,
            "initiator" if ev.role is Role.INITIATOR else "responder",
            ev.local[0],
            entry.local_id,
            ev.remote[0],
            entry.remote_id,
            entry.proposal,
        )
        queued, slot.queued_children = slot.queued_children, []
        now = self.now()
        for p2 in queued:
            self._call_nopump(slot, _start_child(p2, now))

    def _v1_renewal_of(self, slot: Slot, ev: IkeSaEstablished) -> P1Entry | None:
        """IKEv1 has no phase 1 rekey exchange: the peer renews its ISAKMP SA with a new main or
        aggressive mode under new cookies, which reaches a new responder engine. One for the same
        definition, addresses and identities as a live responder tunnel with that peer is that
        tunnel renewed, not another one (else each renewal lists a new tunnel, and the old one's
        end would leave its phase 2 SAs unrefreshed). A tunnel we initiated is renewed by our own
        engine; a peer's main mode beside it is the peer initiating too, a tunnel of its own."""
        if ev.role is not Role.RESPONDER or ev.phase1 is None:
            return None
        for n in sorted(self._established_by_peer.get((ev.remote[0], str(ev.remote_id)), ()), reverse=True):
            e = self.p1.get(n)
            if (
                e is not None
                and e.state == "established"
                and not e.removing
                and e.version == 1
                and e.role is Role.RESPONDER
                and e.slot is not None
                and e.slot is not slot
                and not e.slot.dead
                and e.definition is not None
                and e.definition.number == ev.phase1.number
                and e.local[0] == ev.local[0]
                and e.local_id == str(ev.local_id)
            ):
                return e
        return None

    def _move_initiated_children(self, old: Slot, entry: P1Entry) -> None:
        """The peer renewed `entry` under a new engine. The phase 2 SAs we initiated under the old
        ISAKMP SA would run out unrefreshed (only the initiator of a phase 2 SA rekeys it, and their
        engine is about to lose its ISAKMP SA), so they are negotiated again under the new one now,
        keeping their numbers; the old engine can still send the Delete for the SAs they replace."""
        for p2e in {id(c): c for c in old.p2_by_child.values()}.values():
            if p2e.live and p2e.slot is old and p2e.role is Role.INITIATOR and p2e.refresh and p2e.definition:
                log.info("phase 2 tunnel %d: negotiating it again under the renewed phase 1 SA", p2e.number)
                self._start_under(entry, p2e, p2e.definition)

    def _start_under(self, p1e: P1Entry, e: P2Entry, p2: Phase2Tunnel) -> None:
        """Negotiate `p2` under `p1e`'s current SA; its SA, once up, belongs to tunnel `e`."""
        slot = p1e.slot
        assert slot is not None  # live entries always have their slot
        slot.p2_pending.setdefault(p2.number, []).append(e)
        if p1e.state == "established":
            self._call(slot, _start_child(p2, self.now()))
        else:
            slot.queued_children.append(p2)

    def _carried_over(self, p1e: P1Entry, p2: Phase2Tunnel, slot: Slot) -> P2Entry | None:
        """The phase 2 tunnel of `p1e` for definition `p2` whose SAs an older engine of that tunnel
        (see P1Entry.old_slots) still holds: a new SA for it under the renewed ISAKMP SA is its
        rekey (the peer's Delete of the old SA goes to the new engine, which does not know it)."""
        live = self.p2_live_by_def.get(p2.number)
        if live is not None and live.p1 is p1e and live.slot is not slot and live.sas:
            return live
        for old in p1e.old_slots:
            for c in old.p2_by_child.values():
                if c.live and c.p1 is p1e and c.slot is old and c.definition and c.definition.number == p2.number:
                    return c
        return None

    def _nat_keepalives(self, slot: Slot, ev: IkeSaEstablished) -> None:
        """Behind a NAT, keep its mapping alive for as long as the association lives (IKEv1 phase 2
        SAs outlive their ISAKMP SA, and their ESP needs the mapping too): one timer per association."""
        if not ev.nat_local or self.send_keepalive is None or self.nat_keepalive_s <= 0:
            return
        slot.keepalive_path = (ev.local, ev.remote)  # a rekey may have moved either end
        if slot.keepalive is None:
            slot.keepalive = self.loop.call_later(self.nat_keepalive_s, self._keepalive_fired, slot)

    def _keepalive_fired(self, slot: Slot) -> None:
        slot.keepalive = None
        if slot.dead or self._closing or slot.keepalive_path is None or self.send_keepalive is None:
            return
        local, remote = slot.keepalive_path
        try:
            self.send_keepalive(local, remote)
            self.stats.keepalives_sent += 1
        except Exception as e:
            log.debug("NAT keepalive to %s failed: %s", remote[0], e)
        slot.keepalive = self.loop.call_later(self.nat_keepalive_s, self._keepalive_fired, slot)

    def _call_nopump(self, slot: Slot, fn: Callable[[Engine], None]) -> None:
        """An engine call made while pumping that slot (the pump loop collects its output)."""
        try:
            fn(slot.engine)
        except Exception as e:
            self.stats.engine_errors += 1
            log.exception("IKE engine for %s failed", slot.remote[0])
            raise RuntimeError(str(e)) from e

    def _on_ike_down(self, slot: Slot, ev: IkeSaDeleted) -> None:
        entry = slot.p1_by_sa.pop(ev.sa_id, None)
        if entry is not None and entry.slot is not slot:
            # IKEv1: an older ISAKMP SA of a tunnel the peer renewed under another engine (its
            # Delete, or its expiry): the tunnel goes on under the new one.
            slot.ike_alive = bool(slot.p1_by_sa)
            return
        if entry is None or (entry.sa_id != ev.sa_id and entry.state in (*LIVE, "deleting")):
            return  # an SA that was rekeyed away; the tunnel goes on under its successor
        if ev.reason == "rekeyed" and any(e is entry for e in slot.p1_by_sa.values()):
            return  # its successor is already registered under another sa_id
        reason = ev.reason
        slot.ike_alive = False
        action = ev.dpd_action
        if action is None and entry.definition is not None and "unreachable" in reason:
            action = entry.definition.policy.dpd_action.value
        if action == DpdAction.HOLD.value and not entry.removing and entry.definition is not None:
            # Before the children go: the trap takes their routes over without a gap.
            self._hold(entry, [c.definition for c in entry.children.values() if c.definition is not None])
        if slot.version == 2:
            # RFC 7296 §1.4.1: child SAs cannot outlive their IKE SA.
            for p2e in {id(x): x for x in [*entry.children.values(), *slot.p2_by_child.values()]}.values():
                if p2e.live and p2e.slot is slot:
                    p2e.removing = p2e.removing or entry.removing
                    self._p2_gone(p2e, f"its IKE SA ended ({reason})")
        else:
            # IKEv1 / AIX: phase 2 SAs run on until they expire, and are not refreshed.
            for p2e in entry.children.values():
                p2e.refresh = False
        self._p1_gone(entry, reason)
        if entry.definition is not None and entry.definition.number in self._holds:
            entry.last_error = f"{reason}; held: the next packet for its phase 2 selectors re-activates it"
        if action == DpdAction.RESTART.value and not entry.removing and entry.definition is not None:
            target = ActivationTarget(entry.definition, [c.definition for c in entry.children.values() if c.definition])
            self._schedule_restart(target, entry.number)

    def _schedule_restart(self, target: ActivationTarget, active_number: int) -> None:
        """Retry the activation with back-off until the peer answers again (strongSwan's restart
        retries too); a later success or an `ike cmd=remove` of the tunnel ends the retries."""
        if self._closing:
            return
        number = target.phase1.number
        prev = self._restarts.pop(number, None)
        tries = 0
        if prev is not None:
            prev[2].cancel()
            tries = prev[1] + 1
        delay = min(RESTART_DELAY_S * 2**tries, RESTART_MAX_DELAY_S)
        log.info("phase 1 tunnel %d: peer unreachable, restarting in %.0f s (try %d)", active_number, delay, tries + 1)
        self._restarts[number] = (target, tries, self.loop.call_later(delay, self._restart, number))

    def _restart(self, number: int) -> None:
        pending = self._restarts.get(number)
        if pending is not None and not self._closing:
            self.activate([pending[0]], None)

    def _cancel_restart(self, definition: Phase1Tunnel | None) -> None:
        if definition is not None and (pending := self._restarts.pop(definition.number, None)) is not None:
            pending[2].cancel()

    # --- dpd_action=hold --------------------------------------------------------------------------

    def _hold(self, entry: P1Entry, phase2: list[Phase2Tunnel]) -> None:
        assert entry.definition is not None
        number = entry.definition.number
        if self._closing or self.dataplane is None:
            return
        self._release_hold(number)
        if not phase2:
            log.warning("phase 1 tunnel %d: dpd_action hold needs phase 2 tunnels to trap; cleared", entry.number)
            return
        hold = Hold(ActivationTarget(entry.definition, phase2), {}, entry.number)
        for p2 in phase2:
            tid = self._next_trap
            self._next_trap += 1
            try:
                self.dataplane.trap(tid, [p2.local_ts], [p2.remote_ts])
            except Exception as e:
                log.warning("phase 2 tunnel %s: cannot hold its traffic (%s); cleared instead", p2.name, e)
                continue
            hold.traps[p2.number] = tid
            self._trap_owner[tid] = number
            self._held_p2[p2.number] = number
        if hold.traps:
            self._holds[number] = hold
            log.info(
                "phase 1 tunnel %d: peer unreachable; holding the traffic of %s until a packet re-activates it",
                entry.number,
                ", ".join(p2.name for p2 in phase2 if p2.number in hold.traps),
            )

    def on_acquire(self, trap_id: int) -> None:
        """The data plane saw traffic for a held tunnel: negotiate it again."""
        number = self._trap_owner.get(trap_id)
        hold = self._holds.get(number) if number is not None else None
        if hold is None or self._closing:
            return
        results = self.activate([hold.target], None)  # idempotent: what already runs is left alone
        if any(r.get("status") == "started" for r in results):
            log.info("phase 1 tunnel %s: traffic for a held tunnel; activating it", hold.target.phase1.name)
        for r in results:
            if r.get("status") == "failed":
                log.error("re-activating held tunnel %s failed: %s", r.get("name"), r.get("message"))

    def _untrap(self, p2: Phase2Tunnel) -> None:
        """A phase 2 SA for a held definition is installed: its trap is no longer needed."""
        number = self._held_p2.pop(p2.number, None)
        hold = self._holds.get(number) if number is not None else None
        if hold is None or p2.number not in hold.traps:
            return
        tid = hold.traps.pop(p2.number)
        self._trap_owner.pop(tid, None)
        if self.dataplane is not None:
            self.dataplane.untrap(tid)
        if not hold.traps:
            del self._holds[hold.target.phase1.number]

    def _release_hold(self, number: int) -> None:
        hold = self._holds.pop(number, None)
        if hold is None:
            return
        for p2_number, tid in hold.traps.items():
            self._trap_owner.pop(tid, None)
            self._held_p2.pop(p2_number, None)
            if self.dataplane is not None:
                self.dataplane.untrap(tid)
        log.info("phase 1 tunnel %d: its traffic is no longer held", hold.entry)

    def _on_child_up(self, slot: Slot, ev: ChildSaEstablished) -> None:
        entry: P2Entry | None = None
        if slot.detached and ev.rekey_of is not None:
            # Not refreshed (its phase 1 was removed): the old SA runs until it expires. The engine
            # refuses rekeys from then on; this is one that was already under way.
            log.info("phase 2 SA %s: not refreshed (its phase 1 was removed); deleting the new one", ev.rekey_of)
            self._call_nopump(slot, lambda eng: eng.delete_child(ev.child_id, self.now()))
            return
        if ev.rekey_of is not None:
            entry = slot.p2_by_child.get(ev.rekey_of)
            if entry is None:
                # The SA it replaces is already gone (e.g. the other half of a simultaneous rekey):
                # it still belongs to the same tunnel.
                live = self.p2_live_by_def.get(ev.phase2.number)
                entry = live if live is not None and live.slot is slot else None
            if entry is not None:
                entry.rekeys += 1
        if entry is None:
            pending = slot.p2_pending.get(ev.phase2.number)
            if pending:
                entry = pending.pop(0)
                if not pending:
                    del slot.p2_pending[ev.phase2.number]
        p1e = slot.p1_by_sa.get(ev.sa_id) or next((x for x in slot.p1_by_sa.values() if x.live), None)
        if entry is None and slot.version == 1 and p1e is not None and p1e.slot is slot:
            entry = self._carried_over(p1e, ev.phase2, slot)
        if entry is None:
            entry = self._new_p2(ev.role, ev.phase2, p1e, slot)
        if entry.p1 is None and p1e is not None:
            entry.p1 = p1e
            p1e.children[entry.number] = entry
        # IKEv1, renewed phase 1: the tunnel's SAs so far are in an older engine. The new SA takes
        # over; they go once it is installed (engines number children locally, so keep them apart).
        handover: tuple[Slot, dict[int, int | None], dict[int, ChildSaEstablished]] | None = None
        if entry.slot is not None and entry.slot is not slot and entry.sas:
            handover = (entry.slot, entry.sas, entry.shown)
            entry.sas, entry.shown = {}, {}
            entry.rekeys += 1
        entry.slot = slot
        entry.definition = ev.phase2
        entry.state = "established"
        entry.last_error = None
        slot.p2_by_child[ev.child_id] = entry
        if self._refreshed_p2(ev.phase2.number) is None:  # none yet, or an orphan this one succeeds
            self.p2_live_by_def[ev.phase2.number] = entry
        dp_id: int | None = None
        if self.dataplane is not None:
            dp_id = self._next_dp
            self._next_dp += 1
            try:
                self.dataplane.install(dataclasses.replace(ev, child_id=dp_id))
            except Exception as e:
                # The SA cannot carry traffic: delete it; the tunnel fails unless an older SA of
                # it (this was a rekey) still runs.
                log.error("phase 2 tunnel %d: the data plane refused the SA: %s", entry.number, e)
                slot.p2_by_child.pop(ev.child_id, None)
                self._call_nopump(slot, lambda eng: eng.delete_child(ev.child_id, self.now()))
                if handover is not None:  # the older engine's SAs go on carrying the tunnel
                    entry.slot, entry.sas, entry.shown = handover
                    entry.rekeys -= 1
                if not entry.sas:
                    self._p2_fail(entry, f"the data plane refused the SA: {e}")
                else:
                    entry.last_error = f"a rekeyed SA was refused by the data plane: {e}"
                return
            self.p2_by_dp[dp_id] = (entry, ev.child_id)
            if self._held_p2:
                self._untrap(ev.phase2)
        entry.sas[ev.child_id] = dp_id
        # Kept for the listing without its keys: the data plane holds those, the table need not.
        entry.shown[ev.child_id] = dataclasses.replace(
            ev, inbound=ChildSaKeys(ev.inbound.spi, b"", b""), outbound=ChildSaKeys(ev.outbound.spi, b"", b"")
        )
        self._show(entry, ev.child_id, self.now(), time.time())
        if handover is not None:
            self._retire_handed_over(entry, handover[0], handover[1])
        _resolve(entry.waiters)
        log.info(
            "phase 2 tunnel %d %s: %s %s %s <-> %s, SPIs in %s out %s, %s%s",
            entry.number,
            "rekeyed" if ev.rekey_of is not None else "established",
            ev.protocol.upper(),
            ev.mode,
            ", ".join(entry.local_ts),
            ", ".join(entry.remote_ts),
            entry.spi_in,
            entry.spi_out,
            entry.proposal,
            ", UDP-encapsulated" if ev.udp_encap else "",
        )

    def _retire_handed_over(self, entry: P2Entry, old: Slot, sas: dict[int, int | None]) -> None:
        """The SAs of `entry` in the older engine `old`, replaced under the renewed phase 1 SA."""
        for cid, dp_id in sas.items():
            if old.p2_by_child.get(cid) is entry:
                del old.p2_by_child[cid]
            self._dp_remove(entry, dp_id)
        now = self.now()
        for cid in sas:
            self._call(old, _delete_child(cid, now))

    def _show(self, entry: P2Entry, child_id: int, at: float | None, wall: float | None) -> None:
        """Make `child_id` the SA that the tunnel's listing shows and that gets rekeyed."""
        ev = entry.shown[child_id]
        entry.child_id, entry.dp_id = child_id, entry.sas.get(child_id)
        entry.protocol, entry.mode = ev.protocol, ev.mode
        entry.proposal = str(ev.proposal)
        entry.pfs_group = ev.pfs_group
        entry.spi_in, entry.spi_out = ev.inbound.spi.hex(), ev.outbound.spi.hex()
        entry.local_ts = tuple(str(t) for t in ev.local_ts)
        entry.remote_ts = tuple(str(t) for t in ev.remote_ts)
        entry.local, entry.remote = ev.local, ev.remote
        entry.udp_encap = ev.udp_encap
        entry.lifetime_s, entry.lifetime_kb = ev.lifetime_s, ev.lifetime_kb
        if at is not None:
            entry.established_at, entry.established_wall = at, wall

    def _on_child_down(self, slot: Slot, ev: ChildSaDeleted) -> None:
        entry = slot.p2_by_child.get(ev.child_id)
        if entry is None:
            return
        self._drop_child_sa(entry, ev.child_id, ev.reason)

    def _drop_child_sa(self, entry: P2Entry, child_id: int, reason: str) -> None:
        """One SA of the tunnel is gone; the tunnel ends only with its last SA (a rekey, or the
        loser of a simultaneous rekey, leaves the others running)."""
        if entry.slot is not None:
            entry.slot.p2_by_child.pop(child_id, None)
        if child_id not in entry.sas:
            return
        self._dp_remove(entry, entry.sas.pop(child_id))
        entry.shown.pop(child_id, None)
        if entry.sas:
            if child_id == entry.child_id:
                self._show(entry, next(reversed(entry.sas)), None, None)
            return
        self._p2_gone(entry, reason)

    def _on_failed(self, slot: Slot, ev: NegotiationFailed) -> None:
        detail = dict(offered=ev.offered, peer_offered=ev.peer_offered, notify=ev.notify)
        if ev.phase == 1:
            entry = slot.p1_pending
            slot.p1_pending = None
            if entry is None:
                entry = self._new_p1(slot.role, ev.phase1, slot.remote, slot.remote, slot.version, slot)
            self._p1_fail(entry, ev.reason, **detail)
            slot.ike_alive = bool(slot.p1_by_sa)
            for entries in slot.p2_pending.values():
                for waiting in entries:
                    self._p2_fail(waiting, f"phase 1 failed: {ev.reason}")
            slot.p2_pending.clear()
            if not slot.ike_alive:
                slot.queued_children.clear()
            return
        # A failed rekey belongs to the live tunnel it would have rekeyed, which runs on (_p2_fail).
        p2e: P2Entry | None = slot.p2_by_child.get(ev.rekey_of) if ev.rekey_of is not None else None
        if p2e is not None and not p2e.live:
            p2e = None
        reason = f"rekey failed: {ev.reason}" if p2e is not None else ev.reason
        if p2e is None and ev.phase2 is not None:
            pending = slot.p2_pending.get(ev.phase2.number)
            if pending:
                p2e = pending.pop(0)
                if not pending:
                    del slot.p2_pending[ev.phase2.number]
        elif p2e is None and slot.p2_pending:
            # The engine could not say which definition; the oldest outstanding request failed.
            num = next(iter(slot.p2_pending))
            p2e = slot.p2_pending[num].pop(0)
            if not slot.p2_pending[num]:
                del slot.p2_pending[num]
        if p2e is None:
            p1e = next(iter(slot.p1_by_sa.values()), None)
            p2e = self._new_p2(slot.role, ev.phase2, p1e, slot)
        self._p2_fail(p2e, reason, **detail)

    # --- entry lifecycle ------------------------------------------------------------------------

    def _new_p1(
        self, role: Role, definition: Phase1Tunnel | None, local: Address, remote: Address, version: int, slot: Slot
    ) -> P1Entry:
        e = P1Entry(self._next_p1, role, definition, local, remote, version, slot=slot)
        self._next_p1 += 1
        self.p1[e.number] = e
        return e

    def _new_p2(self, role: Role, definition: Phase2Tunnel | None, p1: P1Entry | None, slot: Slot) -> P2Entry:
        e = P2Entry(self._next_p2, role, definition, p1, slot=slot)
        self._next_p2 += 1
        self.p2[e.number] = e
        if p1 is not None:
            p1.children[e.number] = e
        return e

    def _p1_fail(self, e: P1Entry, reason: str, **detail: Any) -> None:
        self._died(e)
        e.state = "failed"
        e.last_error = reason
        e.offered = tuple(detail.get("offered") or ())
        e.peer_offered = tuple(detail.get("peer_offered") or ())
        e.notify = detail.get("notify")
        self._unlive_p1(e)
        log.error("phase 1 tunnel %d to %s failed: %s", e.number, e.remote[0], reason)
        if e.definition is not None and e.definition.number in self._restarts and not e.removing:
            self._schedule_restart(self._restarts[e.definition.number][0], e.number)
        for line in e.offered:
            log.info("phase 1 tunnel %d: we offered %s", e.number, line)
        for line in e.peer_offered:
            log.info("phase 1 tunnel %d: peer offered %s", e.number, line)
        _resolve(e.waiters)

    def _p1_gone(self, e: P1Entry, reason: str) -> None:
        self._died(e)
        e.state = "expired" if "expire" in reason else "deleted"
        if e.state == "deleted" and not e.removing:
            e.last_error = reason
        self._unlive_p1(e)
        log.info("phase 1 tunnel %d to %s ended: %s", e.number, e.remote[0], reason)
        _resolve(e.waiters)
        if e.removing:
            self._forget_p1(e)

    def _unlive_p1(self, e: P1Entry) -> None:
        if e.definition is not None and self.p1_live_by_def.get(e.definition.number) is e:
            del self.p1_live_by_def[e.definition.number]
        if e.definition is not None and self._p1_by_def_peer.get(key := (e.definition.number, e.remote[0])) is e:
            del self._p1_by_def_peer[key]
        peers = self._established_by_peer.get((e.remote[0], e.remote_id))
        if peers is not None:
            peers.discard(e.number)
            if not peers:
                del self._established_by_peer[(e.remote[0], e.remote_id)]

    def _p2_fail(self, e: P2Entry, reason: str, **detail: Any) -> None:
        e.last_error = reason
        e.offered = tuple(detail.get("offered") or ())
        e.peer_offered = tuple(detail.get("peer_offered") or ())
        e.notify = detail.get("notify")
        if e.sas and e.live and e.slot is not None and not e.slot.dead:
            # A new SA for a tunnel that has one failed (its rekey, or negotiating it again under a
            # renewed IKEv1 phase 1 SA, _move_initiated_children): the SA it has runs on.
            log.warning("phase 2 tunnel %d: %s; its current SA runs on until it expires", e.number, reason)
            return
        self._died(e)
        e.state = "failed"
        self._unlive_p2(e)
        log.error("phase 2 tunnel %d failed: %s", e.number, reason)
        for line in e.offered:
            log.info("phase 2 tunnel %d: we offered %s", e.number, line)
        for line in e.peer_offered:
            log.info("phase 2 tunnel %d: peer offered %s", e.number, line)
        _resolve(e.waiters)

    def _after_child_gone(self, slot: Slot | None) -> None:
        if slot is not None and slot.detached and not slot.dead and not any(c.live for c in slot.p2_by_child.values()):
            slot.detached = False
            self.loop.call_soon(self._delete_detached, slot)

    def _delete_detached(self, slot: Slot) -> None:
        log.info("the last phase 2 SA under a removed phase 1 ended; deleting its IKE SA")
        self._call(slot, lambda eng: eng.delete(self.now()))
        if not slot.dead and not slot.engine.is_established():
            self._drop_slot(slot, "deleted locally")

    def _p2_gone(self, e: P2Entry, reason: str) -> None:
        slot = e.slot
        self._died(e)
        e.state = "expired" if "expire" in reason else "deleted"
        if e.state == "deleted" and not e.removing:
            e.last_error = reason
        for cid, dp_id in list(e.sas.items()):
            self._dp_remove(e, dp_id)
            if e.slot is not None and e.slot.p2_by_child.get(cid) is e:
                del e.slot.p2_by_child[cid]
        e.sas.clear()
        e.shown.clear()
        e.dp_id = None
        self._unlive_p2(e)
        log.info("phase 2 tunnel %d ended: %s", e.number, reason)
        _resolve(e.waiters)
        if e.removing:
            self._forget_p2(e)
        self._after_child_gone(slot)

    def _unlive_p2(self, e: P2Entry) -> None:
        if e.definition is not None and self.p2_live_by_def.get(e.definition.number) is e:
            del self.p2_live_by_def[e.definition.number]

    def _dp_remove(self, entry: P2Entry, dp_id: int | None) -> None:
        if dp_id is None:
            return
        self.p2_by_dp.pop(dp_id, None)
        if self.dataplane is not None:
            # Keep the tunnel's traffic totals across rekeys.
            c = _counters(self.dataplane, dp_id)
            c.pop("kb_left", None)
            for k, v in c.items():
                entry.totals[k] = entry.totals.get(k, 0) + v
            try:
                self.dataplane.remove(dp_id)
            except Exception as e:
                log.error("the data plane failed to remove SA %d: %s", dp_id, e)

    def _forget_p1(self, e: P1Entry) -> None:
        self.p1.pop(e.number, None)

    def _forget_p2(self, e: P2Entry) -> None:
        self.p2.pop(e.number, None)
        if e.p1 is not None:
            e.p1.children.pop(e.number, None)

    def _died(self, e: P1Entry | P2Entry) -> None:
        """Record a tunnel that failed or ended; keep at most MAX_DEAD_ENTRIES per phase (oldest
        go first), so a peer sending garbage cannot grow the table without bound."""
        dead, table = (self._graveyard_p1, self.p1) if isinstance(e, P1Entry) else (self._graveyard_p2, self.p2)
        dead.append(e.number)
        while len(dead) > MAX_DEAD_ENTRIES:
            n = dead.popleft()
            old = table.get(n)
            if old is not None and not old.live:
                if isinstance(old, P1Entry):
                    self._forget_p1(old)
                else:
                    self._forget_p2(old)

    # --- data plane callbacks -------------------------------------------------------------------

    def on_dataplane_expire(self, dp_id: int, hard: bool) -> None:
        """The data plane says an SA reached its soft (rekey now) or hard (gone) lifetime."""
        found = self.p2_by_dp.get(dp_id)
        if found is None:
            return
        entry, child_id = found
        slot = entry.slot
        if slot is None:
            return
        if hard:
            self._drop_child_sa(entry, child_id, "expired (lifetime reached)")
            self._call(slot, lambda e: e.delete_child(child_id, self.now()))
        elif entry.refresh and entry.live and child_id == entry.child_id and slot.ike_alive:
            log.info("phase 2 tunnel %d: lifetime nearly used, rekeying", entry.number)
            self._call(slot, lambda e: e.rekey_child(child_id, self.now()))

    def feed_liveness(self) -> None:
        """Tell engines when their peer's ESP last arrived, so that DPD probes only idle peers
        (RFC 3706). Runs every LIVENESS_FEED_S over the live phase 2 tunnels, not per packet: all of
        them, since a definition with a wildcard remote has one per peer (p2_live_by_def one)."""
        if self.dataplane is not None:
            for entry in [e for e in self.p2.values() if e.live]:
                slot = entry.slot
                seen = getattr(slot.engine, "traffic_seen", None) if slot is not None else None
                if not callable(seen) or entry.dp_id is None:
                    continue
                try:
                    counters = self.dataplane.counters(entry.dp_id)
                except Exception:
                    counters = None  # an SA the data plane no longer has: nothing to report
                last = getattr(counters, "last_used", None)
                if isinstance(last, float) and entry.packets_seen_at != last:
                    entry.packets_seen_at = last
                    try:
                        seen(last)
                    except Exception:
                        log.exception("traffic_seen failed")
        if not self._closing:
            self.loop.call_later(LIVENESS_FEED_S, self.feed_liveness)

    # --- what `ike` asks for --------------------------------------------------------------------

    def activate(self, targets: Iterable[ActivationTarget], phase: int | None) -> list[dict[str, Any]]:
        """Start what `targets` name; phase 1 only for phase=1. Returns one result per tunnel."""
        results: list[dict[str, Any]] = []
        for t in targets:
            wanted = [] if phase == 1 else list(t.phase2)
            p1e, existed, msg, taken = self._ensure_phase1(t.phase1, wanted, t.toward)
            r1 = _result(1, t.phase1.number, t.phase1.name, p1e, "exists" if existed else msg or "started")
            results.append(r1)
            for p2 in wanted:
                took = taken.get(p2.number)
                if took is not None:
                    results.append(_result(2, p2.number, p2.name, took, "started"))
                    continue
                if p1e is None or not p1e.live:
                    results.append(
                        {
                            "phase": 2,
                            "db": p2.number,
                            "name": p2.name,
                            "tunnel": None,
                            "status": "failed",
                            "message": f"phase 1 tunnel {t.phase1.name} could not be started"
                            + (f": {p1e.last_error}" if p1e is not None and p1e.last_error else ""),
                        }
                    )
                    continue
                p2e, existed2 = self._ensure_phase2(p1e, p2, t.toward)
                results.append(_result(2, p2.number, p2.name, p2e, "exists" if existed2 else "started"))
        return results

    def _ensure_phase1(
        self, p1: Phase1Tunnel, children: list[Phase2Tunnel], toward: str | None = None
    ) -> tuple[P1Entry | None, bool, str | None, dict[int, P2Entry]]:
        """The live phase 1 for `p1` (with `toward`, the one with that peer), or a new initiator;
        also the phase 2 entries for those of `children` the new engine took into its own first
        exchanges."""
        live = self.p1_live_by_def.get(p1.number)
        if toward is not None and (live is None or live.remote[0] != toward):
            live = self._p1_by_def_peer.get((p1.number, toward))
        if live is not None and live.live and live.slot is not None and not live.slot.dead:
            return live, True, None, {}
        remote_ip = p1.remote_addr.strip()
        if remote_ip in ("", "0.0.0.0", "::"):  # noqa: S104
            e = self._dead_p1(p1, f"phase 1 tunnel {p1.name} has no remote address: it can only respond")
            return e, False, "failed", {}
        local_ip = _local_for(p1.local_addr, remote_ip)
        local, remote = (local_ip, 500), (remote_ip, 500)
        # Children already up (e.g. under a responder SA) are not negotiated again.
        fresh = [c for c in children if self._refreshed_p2(c.number, toward) is None]
        try:
            # INITIAL_CONTACT only when nothing of ours is left with this peer: a phase 2 SA running
            # on after `remove phase=1` (or another definition's tunnel) must not be dropped there.
            first = not self._slots_by_peer.get(remote_ip)
            engine, took = self.factory.initiate(p1, fresh, local, remote, self.now(), initial_contact=first)
        except Exception as e:
            log.exception("starting phase 1 tunnel %s failed", p1.name)
            d = self._dead_p1(p1, f"could not start: {e}")
            return d, False, "failed", {}
        slot = self._add_slot(engine, p1.policy.version, Role.INITIATOR, remote)
        entry = P1Entry(self._next_p1, Role.INITIATOR, p1, local, remote, p1.policy.version, slot=slot)
        self._next_p1 += 1
        self.p1[entry.number] = entry
        self.p1_live_by_def[p1.number] = entry
        self._p1_by_def_peer[(p1.number, remote_ip)] = entry
        slot.p1_pending = entry
        taken: dict[int, P2Entry] = {}
        for child in took:
            p2e = self._new_p2(Role.INITIATOR, child, entry, slot)
            slot.p2_pending.setdefault(child.number, []).append(p2e)
            self.p2_live_by_def[child.number] = p2e
            taken[child.number] = p2e
        log.info("phase 1 tunnel %d (%s): initiating IKEv%d to %s", entry.number, p1.name, p1.policy.version, remote_ip)
        self._pump(slot)
        return entry, False, "failed" if entry.state == "failed" else None, taken

    def _dead_p1(self, p1: Phase1Tunnel, reason: str) -> P1Entry:
        e = P1Entry(self._next_p1, Role.INITIATOR, p1, (p1.local_addr, 500), (p1.remote_addr, 500), p1.policy.version)
        self._next_p1 += 1
        self.p1[e.number] = e
        self._p1_fail(e, reason)
        return e

    def _refreshed_p2(self, number: int, toward: str | None = None) -> P2Entry | None:
        """The live phase 2 tunnel of definition `number` (with `toward`, with that peer), unless
        it is an orphan: its phase 1 was removed or ended, so it runs only until it expires (the
        manual) and activating the definition negotiates a new one, under a new or the existing
        phase 1. The orphan is left to run out (nothing in the manual ends it sooner); the new SA
        carries the traffic meanwhile."""
        live = self.p2_live_by_def.get(number)
        if live is None or not live.refresh:
            return None
        if toward is not None and (live.p1 is None or live.p1.remote[0] != toward):
            return None
        return live

    def _ensure_phase2(self, p1e: P1Entry, p2: Phase2Tunnel, toward: str | None = None) -> tuple[P2Entry, bool]:
        live = self._refreshed_p2(p2.number, toward)
        if live is None and toward is not None:
            # One definition, several peers: p2_live_by_def holds one of them; this tunnel's own.
            live = next(
                (
                    c
                    for c in p1e.children.values()
                    if c.live and c.refresh and c.definition and c.definition.number == p2.number
                ),
                None,
            )
        if live is not None:
            return live, True
        slot = p1e.slot
        assert slot is not None  # live entries always have their slot
        e = self._new_p2(Role.INITIATOR, p2, p1e, slot)
        slot.p2_pending.setdefault(p2.number, []).append(e)
        self.p2_live_by_def[p2.number] = e
        log.info("phase 2 tunnel %d (%s): starting under phase 1 tunnel %d", e.number, p2.name, p1e.number)
        if p1e.state == "established":
            self._call(slot, lambda eng: eng.start_child(p2, self.now()))
        else:
            slot.queued_children.append(p2)
        return e, False

    def waiters_for(self, results: list[dict[str, Any]], phase: int | None) -> list[asyncio.Future[None]]:
        """Futures that complete when each started tunnel is established or has failed."""
        futs: list[asyncio.Future[None]] = []
        for r in results:
            if r["tunnel"] is None:
                continue
            table: dict[int, Any] = self.p1 if r["phase"] == 1 else self.p2
            e = table.get(r["tunnel"])
            if e is None or e.state != "negotiating":
                continue
            if r["phase"] == 1 and phase != 1 and any(x["phase"] == 2 for x in results):
                pass  # phase 2 futures cover it (a phase 1 failure fails them too)
            f: asyncio.Future[None] = self.loop.create_future()
            e.waiters.append(f)
            futs.append(f)
        return futs

    def outcome(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in results:
            table: dict[int, Any] = self.p1 if r["phase"] == 1 else self.p2
            e = table.get(r["tunnel"]) if r["tunnel"] is not None else None
            r = dict(r)
            if e is not None:
                r["state"] = e.state
                if e.last_error:
                    r["message"] = e.last_error
                r["offered"] = list(e.offered)
                r["peer_offered"] = list(e.peer_offered)
                r["notify"] = e.notify
            else:
                r.setdefault("state", "failed" if r["status"] == "failed" else "gone")
            out.append(r)
        return out

    def remove(self, phase: int | None, numbers: list[int] | None) -> list[dict[str, Any]]:
        """Deactivate active tunnels. phase=1: the phase 1 SAs (their phase 2 SAs are no longer
        refreshed); phase=2: the phase 2 SAs; no phase: phase 2 SAs first, then phase 1."""
        done: list[dict[str, Any]] = []
        if numbers is not None:
            table: dict[int, Any] = self.p1 if phase in (1, None) else self.p2
            missing = [n for n in numbers if n not in table]
            if missing:
                which = "phase 1" if phase in (1, None) else "phase 2"
                raise ManagerError(
                    f"no active {which} tunnel numbered {', '.join(map(str, missing))}; "
                    "see ike cmd=list (active numbers differ from database numbers)"
                )
        if phase == 2:
            for n in numbers if numbers is not None else list(self.p2):
                done.append(self._remove_p2(self.p2[n]))
            return done
        p1s = [self.p1[n] for n in numbers] if numbers is not None else list(self.p1.values())
        if phase is None:
            for p1e in p1s:
                for c in list(p1e.children.values()):
                    done.append(self._remove_p2(c))
            if numbers is None:
                for c in [e for e in self.p2.values() if e.p1 is None or e.p1.number not in self.p1]:
                    done.append(self._remove_p2(c))
        for p1e in p1s:
            done.append(self._remove_p1(p1e))
        return done

    def _remove_p1(self, e: P1Entry) -> dict[str, Any]:
        r = {"phase": 1, "tunnel": e.number, "name": e.definition.name if e.definition else None}
        self._cancel_restart(e.definition)
        if e.definition is not None:
            self._release_hold(e.definition.number)
        if not e.live or e.slot is None or e.slot.dead:
            self._forget_p1(e)
            r["status"] = "forgotten"
            return r
        e.removing = True
        slot = e.slot
        for c in slot.p2_by_child.values():
            c.refresh = False
        for c in e.children.values():
            c.refresh = False
        running = {id(c) for c in slot.p2_by_child.values() if c.live}
        if e.version == 2 and e.state == "established" and running:
            # The AIX semantics (phase 2 runs on until it expires, not refreshed) within RFC 7296:
            # keep the IKE SA but no longer list or use it; delete it with its last child SA.
            slot.detached = True
            stop = getattr(slot.engine, "stop_refreshing", None)
            if stop is not None:
                stop(self.now())
                self._schedule(slot)
            self._unlive_p1(e)
            self._forget_p1(e)
            log.info(
                "phase 1 tunnel %d removed; its IKE SA stays unlisted until its %d phase 2 SA(s) expire",
                e.number,
                len(running),
            )
            r["status"] = "removed"
            return r
        log.info("phase 1 tunnel %d: removing on request", e.number)
        if e.state == "negotiating":
            # Nothing established to delete: tell the engine (it may send what it can), then drop
            # the association and the phase 2 requests that waited for it.
            try:
                slot.engine.delete(self.now())
                for dg in slot.engine.datagrams_to_send():
                    self.send(dg)
            except Exception:
                log.exception("abandoning phase 1 tunnel %d", e.number)
            slot.p1_pending = None
            self._unlive_p1(e)
            e.state = "deleted"
            self._forget_p1(e)
            for lst in slot.p2_pending.values():
                for c in lst:
                    self._unlive_p2(c)
                    self._forget_p2(c)
            slot.p2_pending.clear()
            slot.queued_children.clear()
            if not slot.p1_by_sa:
                self._drop_slot(slot, "removed")
        else:
            self._call(slot, lambda eng: eng.delete(self.now()))
            for old in list(e.old_slots):  # IKEv1: older ISAKMP SAs of it the peer has not deleted yet
                if old.p1_by_sa:
                    self._call(old, lambda eng: eng.delete(self.now()))
            if e.live:
                # The engine deletes after the exchange in flight (IKEv2 runs one at a time); the
                # tunnel is no longer "the" live one for its definition, and is shown as deleting.
                e.state = "deleting"
                self._unlive_p1(e)
                self.loop.call_later(DELETE_GRACE_S, self._delete_overdue, slot, e)
        r["status"] = "removed"
        return r

    def _delete_overdue(self, slot: Slot, e: P1Entry) -> None:
        if not slot.dead and e.state == "deleting":
            log.info("phase 1 tunnel %d: the delete did not complete; dropping it", e.number)
            self._drop_slot(slot, "deleted locally")
            self._forget_p1(e)

    def _remove_p2(self, e: P2Entry) -> dict[str, Any]:
        r = {"phase": 2, "tunnel": e.number, "name": e.definition.name if e.definition else None}
        slot = e.slot
        if not e.live or slot is None or slot.dead:
            self._forget_p2(e)
            r["status"] = "forgotten"
            return r
        e.removing = True
        log.info("phase 2 tunnel %d: removing on request", e.number)
        if e.child_id is None:
            # Still negotiating: forget the request; a late success is deleted when it arrives.
            for lst in slot.p2_pending.values():
                if e in lst:
                    lst.remove(e)
            self._unlive_p2(e)
            e.state = "deleted"
            self._forget_p2(e)
        else:
            children = list(e.sas)
            # Remove from the data plane now: the user asked for it to stop carrying traffic.
            self._p2_gone(e, "removed by administrator")
            now = self.now()
            for cid in children:
                self._call(slot, _delete_child(cid, now))
        r["status"] = "removed"
        return r

    # --- listing --------------------------------------------------------------------------------

    def listing(self, phase: str, numbers: list[int] | None, role: str | None) -> dict[str, Any]:
        """phase '1': phase 1 tunnels; '1+': each phase 1 tunnel and its phase 2 tunnels;
        '2': the phase 2 tunnels, each with its phase 1 tunnel. `numbers` are of the phase named."""
        want_role = Role(role) if role else None
        now = self.now()
        missing: list[int] = []
        tunnels: list[dict[str, Any]] = []
        if phase in ("1", "1+"):
            chosen = [self.p1[n] for n in numbers if n in self.p1] if numbers is not None else list(self.p1.values())
            if numbers is not None:
                missing = [n for n in numbers if n not in self.p1]
            for e in chosen:
                if want_role is not None and e.role is not want_role:
                    continue
                rec = self._p1_record(e, now)
                if phase == "1+":
                    rec["phase2"] = [self._p2_record(c, now) for c in e.children.values()]
                tunnels.append(rec)
            if phase == "1+" and numbers is None:
                orphans = [e for e in self.p2.values() if e.p1 is None or e.p1.number not in self.p1]
                for c in orphans:
                    if want_role is None or c.role is want_role:
                        tunnels.append({"phase": 2, **self._p2_record(c, now)})
        else:
            chosen2 = [self.p2[n] for n in numbers if n in self.p2] if numbers is not None else list(self.p2.values())
            if numbers is not None:
                missing = [n for n in numbers if n not in self.p2]
            for c in chosen2:
                if want_role is not None and c.role is not want_role:
                    continue
                rec = self._p2_record(c, now)
                rec["phase1"] = self._p1_record(c.p1, now) if c.p1 is not None else None
                tunnels.append(rec)
        return {"phase": phase, "tunnels": tunnels, "missing": missing}

    def _p1_record(self, e: P1Entry, now: float) -> dict[str, Any]:
        left = None
        if e.established_at is not None and e.lifetime_s and e.live:
            left = max(0, round(e.established_at + e.lifetime_s - now))
        d = e.definition
        return {
            "tunnel": e.number,
            "db": d.number if d else None,
            "name": d.name if d else None,
            "state": e.state,
            "role": e.role.value,
            "version": e.version,
            "local": e.local[0],
            "remote": e.remote[0],
            "local_port": e.local[1],
            "remote_port": e.remote[1],
            "local_id": e.local_id or (str(d.local_id) if d else ""),
            "remote_id": e.remote_id or (str(d.remote_id) if d else ""),
            "mode": ("main" if d is None else d.policy.mode) if e.version == 1 else None,
            "auth": d.policy.auth.value if d else None,
            "proposal": e.proposal,
            "spi_i": e.spi_i,
            "spi_r": e.spi_r,
            "lifetime_s": e.lifetime_s,
            "lifetime_left_s": left,
            "established": e.established_wall,
            "nat": _nat_text(e.nat_local, e.nat_remote),
            "rekeys": e.rekeys,
            "last_error": e.last_error,
            "notify": e.notify,
            "offered": list(e.offered),
            "peer_offered": list(e.peer_offered),
            "phase2_tunnels": sorted(e.children),
            "held": d is not None and (h := self._holds.get(d.number)) is not None and h.entry == e.number,
        }

    def _p2_record(self, e: P2Entry, now: float) -> dict[str, Any]:
        left = None
        if e.established_at is not None and e.lifetime_s and e.live:
            left = max(0, round(e.established_at + e.lifetime_s - now))
        d = e.definition
        counters: dict[str, int | None] = dict(e.totals)
        kb_left = None
        for dp_id in e.sas.values():
            if dp_id is not None:
                c = _counters(self.dataplane, dp_id)
                # Per SA, not a total: the KB lifetime is each SA's own; the current one counts.
                left = c.pop("kb_left", None)
                if dp_id == e.dp_id:
                    kb_left = left
                for k, v in c.items():
                    counters[k] = (counters.get(k) or 0) + v
        if e.lifetime_kb and e.live:
            counters["kb_left"] = kb_left
        return {
            "tunnel": e.number,
            "phase1_tunnel": e.p1.number if e.p1 else None,
            "db": d.number if d else None,
            "name": d.name if d else None,
            "state": e.state,
            "role": e.role.value,
            "protocol": e.protocol or (d.policy.protocol if d else ""),
            "mode": e.mode or (d.policy.mode if d else ""),
            "proposal": e.proposal,
            "pfs_group": e.pfs_group,
            "spi_in": e.spi_in,
            "spi_out": e.spi_out,
            "local_ts": list(e.local_ts) or ([str(d.local_ts)] if d else []),
            "remote_ts": list(e.remote_ts) or ([str(d.remote_ts)] if d else []),
            "local": e.local[0] if e.local else None,
            "remote": e.remote[0] if e.remote else None,
            "udp_encap": e.udp_encap,
            "lifetime_s": e.lifetime_s,
            "lifetime_kb": e.lifetime_kb,
            "lifetime_left_s": left,
            "established": e.established_wall,
            "refresh": e.refresh,
            "rekeys": e.rekeys,
            "last_error": e.last_error,
            "notify": e.notify,
            "offered": list(e.offered),
            "peer_offered": list(e.peer_offered),
            **counters,
        }

    # --- shutdown -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Delete every SA (tell the peers) and empty the data plane."""
        self._closing = True
        for slot in list(self.slots.values()):
            self._call(slot, lambda eng: eng.delete(self.now()))
        for slot in list(self.slots.values()):
            self._drop_slot(slot, "iked stopped")


def _delete_child(child_id: int, now: float) -> Callable[[Engine], None]:
    def call(e: Engine) -> None:
        e.delete_child(child_id, now)

    return call


def _start_child(p2: Phase2Tunnel, now: float) -> Callable[[Engine], None]:
    def call(e: Engine) -> None:
        e.start_child(p2, now)

    return call


def _resolve(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)
    futs.clear()


def _result(phase: int, db: int, name: str, e: P1Entry | P2Entry | None, status: str) -> dict[str, Any]:
    r: dict[str, Any] = {"phase": phase, "db": db, "name": name, "tunnel": e.number if e else None, "status": status}
    if status == "failed" and e is not None and e.last_error:
        r["message"] = e.last_error
    return r


def _nat_text(local: bool, remote: bool) -> str:
    if local and remote:
        return "both behind NAT"
    if local:
        return "local behind NAT"
    if remote:
        return "peer behind NAT"
    return "none"


def _counters(dp: DataPlane | None, dp_id: int) -> dict[str, int]:
    if dp is None:
        return {}
    try:
        c = dp.counters(dp_id)
    except Exception:
        return {}
    if c is None:
        return {}
    # Plain attribute reads: dataclasses.asdict deep-copies and was half of a 10,000-tunnel listing.
    out: dict[str, int] = {}
    for k in _COUNTER_KEYS:
        v = c.get(k) if isinstance(c, dict) else getattr(c, k, None)
        if isinstance(v, int):
            out[k] = v
    return out


_COUNTER_KEYS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "dropped_in", "kb_left")


def _local_for(local_addr: str, remote_ip: str) -> str:
    """The definition's local address, or the one the routing table would use to reach the peer."""
    a = local_addr.strip()
    if a and a not in ("0.0.0.0", "::"):  # noqa: S104
        return a
    fam = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((remote_ip, 500))
        return str(s.getsockname()[0])
    except OSError:
        return "::" if fam == socket.AF_INET6 else "0.0.0.0"  # noqa: S104
    finally:
        s.close()


def selectors_text(ts: Iterable[TrafficSelector]) -> str:
    return ", ".join(str(t) for t in ts)
