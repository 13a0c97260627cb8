"""The contract between the sans-IO engines (v1/, v2/) and the daemon.

An engine is one IKE association with one peer: its IKE/ISAKMP SA (and the SAs that rekey it) and
the child (phase 2) SAs negotiated under it. Like aioquic's QuicConnection it has no sockets, clock
or kernel: the daemon feeds it datagrams and time, and drains datagrams, a timer deadline and events.

    engine.receive_datagram(dg, now)     # a datagram for this association
    engine.handle_timer(now)             # when now >= engine.get_timer()
    engine.start_child(phase2, now)      # API calls: negotiate a child SA, delete things
    for dg in engine.datagrams_to_send(): ...
    while (ev := engine.next_event()) is not None: ...

Demultiplexing is the daemon's, by our own SPI (8 random bytes, unique per process): each engine
announces the SPIs it answers to with `SpiAdded` / `SpiRemoved` events, and each version's package
offers `demux(data) -> Demux | None` to read them from a datagram's header. Port 4500's non-ESP
marker is added and stripped by the daemon; engines never see it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ike.policy import (
    EspProposal,
    Identity,
    IkeProposal,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)

Address = tuple[str, int]  # (ip text, UDP port)


@dataclass(frozen=True)
class Datagram:
    data: bytes  # the IKE message, without any non-ESP marker
    local: Address  # our address and port (500, or 4500 after NAT-T / for IKEv2 once moved)
    remote: Address


@dataclass(frozen=True)
class Demux:
    """What the daemon needs to route a datagram to an engine."""

    our_spi: bytes | None  # None: a new negotiation's first message (no SA of ours yet)
    peer_spi: bytes
    version: int


# --- events ---------------------------------------------------------------------------------------


class Role(enum.Enum):
    INITIATOR = "i"
    RESPONDER = "r"


@dataclass(frozen=True)
class SpiAdded:
    spi: bytes


@dataclass(frozen=True)
class SpiRemoved:
    spi: bytes


@dataclass(frozen=True)
class IkeSaEstablished:
    sa_id: int  # engine-local number of this IKE SA (changes when it is rekeyed)
    version: int
    role: Role
    phase1: Phase1Tunnel  # the definition it matched
    local: Address
    remote: Address
    local_id: Identity
    remote_id: Identity
    proposal: IkeProposal
    spi_i: bytes
    spi_r: bytes
    lifetime_s: int
    nat_local: bool  # we are behind a NAT
    nat_remote: bool  # the peer is behind a NAT
    rekey_of: int | None = None  # sa_id of the IKE SA this one replaces
    initial_contact: bool = False  # the peer sent INITIAL-CONTACT: its older SAs with us are stale


@dataclass(frozen=True)
class IkeSaDeleted:
    sa_id: int
    reason: str  # "deleted by peer", "deleted locally", "expired", "peer unreachable (DPD)", "rekeyed"
    # For a loss of the peer ("peer unreachable", "peer unreachable (DPD)"): the tunnel's DPD action
    # ("clear", "hold", "restart"). Engines never re-initiate by themselves; acting on it is the daemon's.
    dpd_action: str | None = None


@dataclass(frozen=True)
class ChildSaKeys:
    """One direction of one ESP/AH SA. `enc_key` includes the AEAD salt at its end."""

    spi: bytes  # 4 bytes
    enc_key: bytes
    integ_key: bytes


@dataclass(frozen=True)
class ChildSaEstablished:
    child_id: int  # engine-local number, stable for log lines
    sa_id: int  # IKE SA it was negotiated under
    phase2: Phase2Tunnel
    role: Role
    protocol: str  # esp | ah
    mode: str  # tunnel | transport
    proposal: EspProposal
    inbound: ChildSaKeys  # we receive with this (its spi is the one we chose)
    outbound: ChildSaKeys
    local_ts: tuple[TrafficSelector, ...]  # after narrowing
    remote_ts: tuple[TrafficSelector, ...]
    local: Address  # outer addresses; port 4500 on both with UDP encapsulation
    remote: Address
    udp_encap: bool
    lifetime_s: int
    lifetime_kb: int  # 0 = none
    pfs_group: int  # 0 = none
    rekey_of: int | None = None  # child_id this one replaces; the daemon removes the old one on its delete


@dataclass(frozen=True)
class ChildSaDeleted:
    child_id: int
    reason: str


@dataclass(frozen=True)
class NegotiationFailed:
    """Any failure, with what went wrong in words; for a proposal, selector or identity mismatch
    also what we offered and what the peer offered, each as readable text lines."""

    phase: int  # 1 or 2
    reason: str
    phase1: Phase1Tunnel | None = None
    phase2: Phase2Tunnel | None = None
    offered: tuple[str, ...] = ()
    peer_offered: tuple[str, ...] = ()
    notify: str | None = None  # the notify type sent or received, e.g. NO_PROPOSAL_CHOSEN
    rekey_of: int | None = None  # a failed rekey of this child SA (engine-local id), which runs on


@dataclass(frozen=True)
class PacketDropped:
    """A datagram the engine refused; counted and logged by the daemon."""

    reason: str
    remote: Address


Event = (
    SpiAdded
    | SpiRemoved
    | IkeSaEstablished
    | IkeSaDeleted
    | ChildSaEstablished
    | ChildSaDeleted
    | NegotiationFailed
    | PacketDropped
)


# --- what an engine asks of the daemon's configuration --------------------------------------------


class PolicySource(Protocol):
    """Read-only lookups into the tunnel definitions (in memory; indexed, never a scan per packet)."""

    def phase1_by_address(self, local_ip: str, remote_ip: str) -> Sequence[Phase1Tunnel]:
        """Definitions whose local/remote addresses match (remote '0.0.0.0'/'::' = any), best first.
        IKEv1 main mode with a PSK must choose by address before it sees an identity."""
        ...

    def phase1_by_identity(self, local_ip: str, remote_ip: str, remote_id: Identity) -> Phase1Tunnel | None: ...

    def phase2_for(
        self, phase1: Phase1Tunnel, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]
    ) -> Phase2Tunnel | None:
        """The phase 2 definition under `phase1` whose selectors overlap the proposed ones
        (`local_ts` is ours, seen from our side). The engine narrows."""
        ...

    def phase2_definitions(self, phase1: Phase1Tunnel) -> Sequence[Phase2Tunnel]:
        """Every phase 2 definition under `phase1`: what we offer, in a selector mismatch event."""
        ...


@dataclass(frozen=True)
class EngineSettings:
    retransmit_timeout_s: float = 1.0  # first retransmission; doubles each time
    retransmit_tries: int = 5  # give up after this many retransmissions
    half_open_cookie_threshold: int = 50  # IKEv2 COOKIE above this many half-open SAs
    fragment_size: int = 1280  # IKEv2 fragmentation (RFC 7383) / IKEv1 size threshold
    nat_keepalive_s: float = 20.0
    rekey_margin: float = 0.1  # rekey when this fraction of the lifetime is left (+ jitter)
    extra: dict[str, object] = field(default_factory=dict)


class Engine(Protocol):
    role: Role

    def receive_datagram(self, dg: Datagram, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def datagrams_to_send(self) -> list[Datagram]: ...

    def next_event(self) -> Event | None: ...

    def start_child(self, phase2: Phase2Tunnel, now: float) -> None: ...

    def rekey_child(self, child_id: int, now: float) -> None: ...

    def delete_child(self, child_id: int, now: float) -> None: ...

    def delete(self, now: float) -> None:
        """Delete the IKE SA (IKEv2: its child SAs go with it, RFC 7296 §1.4.1; IKEv1: they run on
        until they expire, as the AIX manual says of phase 1 removal)."""
        ...

    def is_established(self) -> bool: ...

    def is_finished(self) -> bool:
        """Nothing left to run (no SA, and for IKEv1 no phase 2 SA either): the daemon may forget it."""
        ...
