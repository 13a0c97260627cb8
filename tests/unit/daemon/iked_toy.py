"""A tiny stand-in engine for unit tests of the manager's bookkeeping (not a protocol: a JSON
exchange that emits the api events in the order real engines do). The real engines are exercised
by the namespace tests.

Wire format: 8-byte initiator SPI, 8-byte responder SPI, version byte 0x7f, JSON body.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ike.policy import EspProposal, IkeProposal, Phase1Tunnel, Phase2Tunnel
from ike.proto.api import (
    Address,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaKeys,
    Datagram,
    Demux,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    NegotiationFailed,
    Role,
    SpiAdded,
    SpiRemoved,
)

TOY_VERSION = 0x7F
DEFAULT_IKE = IkeProposal("aes-cbc", 256, "sha2-256", "sha2-256", 14)
RETRANSMIT_S = 0.05
TRIES = 3


def encode(spi_i: bytes, spi_r: bytes, body: dict[str, object]) -> bytes:
    return spi_i + spi_r + bytes([TOY_VERSION]) + json.dumps(body).encode()


@dataclass
class ToyChild:
    child_id: int
    phase2: Phase2Tunnel
    spi_in: bytes
    spi_out: bytes


class ToyEngine:
    def __init__(self, role: Role, policies: object, local: Address, remote: Address, version: int = 2) -> None:
        self.role = role
        self.policies = policies
        self.local = local
        self.remote = remote
        self.version = version
        self.spi = os.urandom(8)
        self.peer_spi = b"\0" * 8
        self.phase1: Phase1Tunnel | None = None
        self.out: list[Datagram] = []
        self.events: list[Event] = [SpiAdded(self.spi)]
        self.timer: float | None = None
        self.tries = 0
        self.pending: bytes | None = None
        self.established = False
        self.sa_id = 1
        self.children: dict[int, ToyChild] = {}
        self.next_child = 1
        self.keys_seen: list[bytes] = []  # every key handed out, for log-leak tests
        self.heard: list[float] = []  # traffic_seen calls

    # --- helpers
    def _send(self, body: dict[str, object], retransmit: bool, now: float) -> None:
        spi_i, spi_r = (self.spi, self.peer_spi) if self.role is Role.INITIATOR else (self.peer_spi, self.spi)
        data = encode(spi_i, spi_r, {**body, "from": self.role.value})
        self.out.append(Datagram(data, self.local, self.remote))
        if retransmit:
            self.pending, self.tries, self.timer = data, 0, now + RETRANSMIT_S

    def _ike_up(self) -> None:
        assert self.phase1 is not None
        spi_i, spi_r = (self.spi, self.peer_spi) if self.role is Role.INITIATOR else (self.peer_spi, self.spi)
        self.established = True
        self.events.append(
            IkeSaEstablished(
                self.sa_id,
                self.version,
                self.role,
                self.phase1,
                self.local,
                self.remote,
                self.phase1.local_id,
                self.phase1.remote_id,
                self.phase1.policy.proposals[0]
                if self.phase1.policy.proposals
                else IkeProposal("aes-cbc", 256, "sha2-256", "sha2-256", 14),
                spi_i,
                spi_r,
                self.phase1.policy.lifetime_s,
                False,
                False,
            )
        )

    def _child_up(self, p2: Phase2Tunnel, child_id: int, rekey_of: int | None = None) -> None:
        spi_in, spi_out = os.urandom(4), os.urandom(4)
        kin, kout = os.urandom(36), os.urandom(36)
        self.keys_seen += [kin, kout]
        self.children[child_id] = ToyChild(child_id, p2, spi_in, spi_out)
        prop = p2.policy.proposals[0] if p2.policy.proposals else EspProposal("aes-gcm-16", 256, None)
        self.events.append(
            ChildSaEstablished(
                child_id,
                self.sa_id,
                p2,
                self.role,
                p2.policy.protocol,
                p2.policy.mode,
                prop,
                ChildSaKeys(spi_in, kin, b""),
                ChildSaKeys(spi_out, kout, b""),
                (p2.local_ts,),
                (p2.remote_ts,),
                self.local,
                self.remote,
                False,
                p2.policy.lifetime_s,
                p2.policy.lifetime_kb,
                p2.policy.pfs_group,
                rekey_of,
            )
        )

    # --- initiator API
    def start(self, phase1: Phase1Tunnel, child: Phase2Tunnel | None, now: float) -> None:
        self.phase1 = phase1
        body: dict[str, object] = {"t": "init", "p1": phase1.name}
        if child is not None:
            body["p2"] = child.name
            body["cid"] = self.next_child
            self._first_child = (child, self.next_child)
            self.next_child += 1
        self._send(body, True, now)

    # --- Engine protocol
    def receive_datagram(self, dg: Datagram, now: float) -> None:
        body = json.loads(dg.data[17:])
        t = body["t"]
        if self.role is Role.RESPONDER and t == "init":
            self.peer_spi = dg.data[:8]
            p1 = self.policies.p1_by_name.get(body["p1"])  # type: ignore[attr-defined]
            if p1 is None:
                self.events.append(
                    NegotiationFailed(
                        1,
                        f"no phase 1 definition named {body['p1']}",
                        offered=("aes-cbc-256/sha2-256/prf-sha2-256/dh14",),
                        peer_offered=("3des/md5/prf-md5/dh2",),
                        notify="NO_PROPOSAL_CHOSEN",
                    )
                )
                self._send({"t": "fail", "why": "NO_PROPOSAL_CHOSEN"}, False, now)
                self.events.append(SpiRemoved(self.spi))
                return
            self.phase1 = p1
            self._ike_up()
            if "p2" in body:
                p2 = self.policies.p2_by_name.get(body["p2"])  # type: ignore[attr-defined]
                if p2 is not None:
                    self._child_up(p2, body["cid"])
            self._send({"t": "ok"}, False, now)
        elif t == "ok" and self.role is Role.INITIATOR and not self.established:
            self.peer_spi = dg.data[8:16]
            self.timer = self.pending = None
            self._ike_up()
            first = getattr(self, "_first_child", None)
            if first is not None:
                self._child_up(*first)
        elif t == "fail":
            self.timer = self.pending = None
            self.events.append(NegotiationFailed(1, f"peer refused: {body['why']}", notify=body["why"]))
            self.events.append(SpiRemoved(self.spi))
        elif t == "child":
            p2 = self.policies.p2_by_name.get(body["p2"])  # type: ignore[attr-defined]
            if p2 is None:
                self._send({"t": "child_fail", "p2": body["p2"]}, False, now)
                return
            self._child_up(p2, body["cid"])
            self._send({"t": "child_ok", "p2": body["p2"], "cid": body["cid"]}, False, now)
        elif t == "child_ok":
            self.timer = self.pending = None
            p2 = self._wanted.pop(body["cid"])
            self._child_up(p2, body["cid"])
        elif t == "child_fail":
            self.timer = self.pending = None
            p2 = self._wanted.pop(next(iter(self._wanted)))
            self.events.append(NegotiationFailed(2, "peer has no matching phase 2 definition", phase2=p2))
        elif t == "delete":
            self._delete_all("deleted by peer")
        elif t == "delete_child" and body["cid"] in self.children:
            del self.children[body["cid"]]
            self.events.append(ChildSaDeleted(body["cid"], "deleted by peer"))

    def _delete_all(self, reason: str) -> None:
        for cid in list(self.children):
            if self.version == 2:
                del self.children[cid]
                self.events.append(ChildSaDeleted(cid, reason))
        self.established = False
        self.timer = None
        self.events.append(IkeSaDeleted(self.sa_id, reason))
        self.events.append(SpiRemoved(self.spi))

    def handle_timer(self, now: float) -> None:
        if self.timer is None or now < self.timer:
            return
        if self.tries >= TRIES:
            self.timer = self.pending = None
            self.events.append(NegotiationFailed(1 if not self.established else 2, "peer did not answer"))
            if not self.established:
                self.events.append(SpiRemoved(self.spi))
            return
        self.tries += 1
        assert self.pending is not None
        self.out.append(Datagram(self.pending, self.local, self.remote))
        self.timer = now + RETRANSMIT_S

    def get_timer(self) -> float | None:
        return self.timer

    def datagrams_to_send(self) -> list[Datagram]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> Event | None:
        return self.events.pop(0) if self.events else None

    def start_child(self, phase2: Phase2Tunnel, now: float) -> None:
        cid = self.next_child
        self.next_child += 1
        if not hasattr(self, "_wanted"):
            self._wanted: dict[int, Phase2Tunnel] = {}
        self._wanted[cid] = phase2
        self._send({"t": "child", "p2": phase2.name, "cid": cid}, True, now)

    def rekey_child(self, child_id: int, now: float) -> None:
        old = self.children.get(child_id)
        if old is None:
            return
        new = self.next_child
        self.next_child += 1
        self._child_up(old.phase2, new, rekey_of=child_id)
        del self.children[child_id]
        self.events.append(ChildSaDeleted(child_id, "rekeyed"))

    def simultaneous_rekey(self, child_id: int) -> tuple[int, int]:
        """What IKEv2 reports when both ends rekey one child at once: two successors, then the
        loser and the old SA deleted."""
        old = self.children[child_id]
        a, b = self.next_child, self.next_child + 1
        self.next_child += 2
        self._child_up(old.phase2, a, rekey_of=child_id)
        self._child_up(old.phase2, b, rekey_of=child_id)
        del self.children[b]
        self.events.append(ChildSaDeleted(b, "redundant after simultaneous rekey"))
        del self.children[child_id]
        self.events.append(ChildSaDeleted(child_id, "rekeyed"))
        return a, b

    def delete_child(self, child_id: int, now: float) -> None:
        if child_id in self.children:
            del self.children[child_id]
            self._send({"t": "delete_child", "cid": child_id}, False, now)
            self.events.append(ChildSaDeleted(child_id, "deleted locally"))

    def delete(self, now: float) -> None:
        if self.established:
            self._send({"t": "delete"}, False, now)
        self._delete_all("deleted locally")

    def is_established(self) -> bool:
        return self.established

    def traffic_seen(self, now: float) -> None:
        self.heard.append(now)


class ToyFactory:
    """The EngineFactory the manager expects, making ToyEngines."""

    def __init__(self, policies: object) -> None:
        self.policies = policies
        self.engines: list[ToyEngine] = []

    def set_policies(self, policies: object) -> None:
        self.policies = policies

    def demux(self, data: bytes) -> Demux | None:
        if len(data) < 17 or data[16] != TOY_VERSION:
            return None
        spi_i, spi_r = data[:8], data[8:16]
        body = json.loads(data[17:])
        if body.get("t") == "init":
            return Demux(None, spi_i, 2)
        # Like the IKE header's I flag: the sender's role says which SPI is the receiver's.
        return Demux(spi_r, spi_i, 2) if body.get("from") == "i" else Demux(spi_i, spi_r, 2)

    def initiate(
        self,
        phase1: Phase1Tunnel,
        children: list[Phase2Tunnel],
        local: Address,
        remote: Address,
        now: float,
        initial_contact: bool = True,
    ) -> tuple[ToyEngine, list[Phase2Tunnel]]:
        """Like IKEv2: the first child rides along with the IKE SA, the rest the manager starts.
        (The toy has no INITIAL_CONTACT; the real engines' tests cover it.)"""
        e = ToyEngine(Role.INITIATOR, self.policies, local, remote, phase1.policy.version)
        first = children[0] if children else None
        e.start(phase1, first, now)
        self.engines.append(e)
        return e, [first] if first is not None else []

    def respond(self, version: int, dg: Datagram, now: float) -> tuple[ToyEngine | None, list[Datagram], list[Event]]:
        """Like the real engines: the responder has already processed the first message."""
        e = ToyEngine(Role.RESPONDER, self.policies, dg.local, dg.remote)
        e.receive_datagram(dg, now)
        self.engines.append(e)
        return e, [], []
