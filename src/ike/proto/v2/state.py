"""IKE SA and CHILD SA state: the data an IKE SA holds and its transitions as explicit tables.

The tables are the only place that says which state may follow which, and which requests a peer
may send us in each state; `IkeSa.set_state` refuses anything else (a bug, never peer input).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ike.policy import EspProposal, Identity, IkeProposal, Phase1Tunnel, Phase2Tunnel, TrafficSelector
from ike.proto.api import Address
from ike.proto.crypto import DhPrivate
from ike.proto.v2.keys import ChildKeys, IkeKeys
from ike.proto.v2.payloads.header import CREATE_CHILD_SA, IKE_AUTH, INFORMATIONAL
from ike.proto.v2.payloads.sk import SkCipher

if TYPE_CHECKING:
    from ike.proto.v2.exchanges.base import Task


class IkeState(enum.Enum):
    INIT_SENT = "IKE_SA_INIT sent"  # initiator, waiting for the IKE_SA_INIT response
    HALF_OPEN = "half-open"  # responder, IKE_SA_INIT answered, waiting for IKE_AUTH
    AUTH_SENT = "IKE_AUTH sent"  # initiator, waiting for the IKE_AUTH response
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA, only its Delete still to run
    DELETING = "deleting"  # our Delete is on its way
    DEAD = "dead"


IKE_TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    IkeState.INIT_SENT: frozenset({IkeState.AUTH_SENT, IkeState.DEAD}),
    IkeState.HALF_OPEN: frozenset({IkeState.ESTABLISHED, IkeState.DEAD}),
    IkeState.AUTH_SENT: frozenset({IkeState.ESTABLISHED, IkeState.DEAD}),
    IkeState.ESTABLISHED: frozenset({IkeState.REKEYED, IkeState.DELETING, IkeState.DEAD}),
    IkeState.REKEYED: frozenset({IkeState.DELETING, IkeState.DEAD}),
    IkeState.DELETING: frozenset({IkeState.DEAD}),
    IkeState.DEAD: frozenset(),
}

# Requests (by exchange type) we answer in each state; anything else is dropped and counted.
# IKE_SA_INIT is never routed to an existing SA except as a retransmission, answered from the cache.
REQUESTS_ACCEPTED: dict[IkeState, frozenset[int]] = {
    IkeState.INIT_SENT: frozenset(),
    IkeState.HALF_OPEN: frozenset({IKE_AUTH}),
    IkeState.AUTH_SENT: frozenset(),
    IkeState.ESTABLISHED: frozenset({CREATE_CHILD_SA, INFORMATIONAL}),
    # CREATE_CHILD_SA is answered TEMPORARY_FAILURE there (a peer's rekey crossing ours).
    IkeState.REKEYED: frozenset({CREATE_CHILD_SA, INFORMATIONAL}),
    IkeState.DELETING: frozenset({CREATE_CHILD_SA, INFORMATIONAL}),
    IkeState.DEAD: frozenset(),
}


class ChildState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA with REKEY_SA is out
    REKEYED = "rekeyed"  # a successor exists; waiting for the Delete
    DELETING = "deleting"
    DELETED = "deleted"


CHILD_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.INSTALLED: frozenset({ChildState.REKEYING, ChildState.REKEYED, ChildState.DELETING, ChildState.DELETED}),
    ChildState.REKEYING: frozenset({ChildState.INSTALLED, ChildState.REKEYED, ChildState.DELETING, ChildState.DELETED}),
    ChildState.REKEYED: frozenset({ChildState.DELETING, ChildState.DELETED}),
    ChildState.DELETING: frozenset({ChildState.DELETED}),
    ChildState.DELETED: frozenset(),
}


_DEADLINE_FIELDS = frozenset({"rekey_at", "expire_at", "state"})


@dataclass
class ChildSa:
    child_id: int
    phase2: Phase2Tunnel
    proposal: EspProposal
    protocol: str
    mode: str
    spi_in: bytes
    spi_out: bytes
    keys: ChildKeys
    we_initiated: bool  # we were the initiator of the exchange that created it (key order)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    pfs_group: int
    created: float
    rekey_at: float | None
    expire_at: float
    nonces: tuple[bytes, bytes]  # (Ni, Nr) of the creating exchange, for §2.8.1 collisions
    rekey_of: int | None = None
    state: ChildState = ChildState.INSTALLED
    # A successor created by the peer's rekey of this SA while ours was running (§2.8.1).
    peer_rekey: ChildSa | None = None
    # Told whenever a field that decides this child's next deadline changes, so the engine can keep
    # its deadlines in a heap instead of scanning every child on each get_timer().
    # A weak reference to that method: a strong one made engine -> SA -> child -> engine a cycle,
    # which only the garbage collector frees, and a busy responder forgets an engine per negotiation.
    watcher: Callable[[], Callable[[ChildSa], None] | None] | None = field(default=None, repr=False, compare=False)

    def set_state(self, new: ChildState) -> None:
        if new is self.state:
            return
        if new not in CHILD_TRANSITIONS[self.state]:
            raise RuntimeError(f"child SA {self.child_id}: {self.state.value} -> {new.value} is not allowed")
        self.state = new


class _Watched:
    """A ChildSa field whose every assignment tells the child's watcher. Only __set__ is defined, so
    reads come straight from the instance dict, and the other fields are set without any hook (a
    __setattr__ for the whole class ran on each of the 21 fields of every new child)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __set__(self, child: ChildSa, value: object) -> None:
        d = child.__dict__
        d[self.name] = value
        w = d.get("watcher")
        if w is not None and (told := w()) is not None:
            told(child)


for _field in _DEADLINE_FIELDS:
    setattr(ChildSa, _field, _Watched(_field))


@dataclass
class Outstanding:
    """Our one request in flight (window size 1)."""

    msg_id: int
    datagrams: list[bytes]
    task: Task
    sent_at: float
    deadline: float
    tries: int = 0


# Slots: an IKE SA has some fifty fields, and one is built per negotiation.
@dataclass(slots=True)
class IkeSa:
    sa_id: int
    initiator: bool  # we are the original initiator of this IKE SA (the header's I flag)
    spi_i: bytes
    spi_r: bytes
    local: Address
    remote: Address
    state: IkeState
    created: float
    phase1: Phase1Tunnel | None = None
    candidates: tuple[Phase1Tunnel, ...] = ()  # responder before IKE_AUTH names the peer
    proposal: IkeProposal | None = None
    keys: IkeKeys | None = None
    out: SkCipher | None = None
    inb: SkCipher | None = None
    ni: bytes = b""
    nr: bytes = b""
    dh: DhPrivate | None = None
    init_request: bytes = b""
    init_response: bytes = b""
    local_id: Identity | None = None
    remote_id: Identity | None = None
    nat_local: bool = False
    nat_remote: bool = False
    force_encap: bool = False
    peer_fragmentation: bool = False
    peer_hashes: frozenset[int] | None = None  # SIGNATURE_HASH_ALGORITHMS, None if not sent
    peer_pss: bool = False  # the peer's AUTH was an RSASSA-PSS signature
    peer_wants_cert: bool = False
    next_msg_id: int = 0
    peer_msg_id: int = 0  # the next request id we expect from the peer
    outstanding: Outstanding | None = None
    response_cache: tuple[int, list[bytes]] | None = None
    tasks: deque[Task] = field(default_factory=deque)
    children: dict[int, ChildSa] = field(default_factory=dict)
    last_heard: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None
    half_open_deadline: float | None = None
    # RFC 7383 reassembly, keyed by (is a response, message ID): requests and responses have separate
    # message ID spaces. Values: fragment number -> plaintext; first inner payload type; total.
    fragments: dict[tuple[bool, int], dict[int, bytes]] = field(default_factory=dict)
    fragment_first: dict[tuple[bool, int], int] = field(default_factory=dict)
    fragment_total: dict[tuple[bool, int], int] = field(default_factory=dict)
    rekey_of: int | None = None
    successor: IkeSa | None = None  # the IKE SA that replaced this one
    peer_rekey: IkeSa | None = None  # a successor the peer created during our rekey (§2.8.2)
    counted_half_open: bool = False
    initial_contact_sent: bool = False
    announced: bool = False  # IkeSaEstablished was emitted for it

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def udp_encap(self) -> bool:
        return self.nat_local or self.nat_remote or self.force_encap

    def set_state(self, new: IkeState) -> None:
        if new is self.state:
            return
        if new not in IKE_TRANSITIONS[self.state]:
            raise RuntimeError(f"IKE SA {self.sa_id}: {self.state.value} -> {new.value} is not allowed")
        self.state = new
