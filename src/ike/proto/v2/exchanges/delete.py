"""INFORMATIONAL with Delete payloads (RFC 7296 §1.4.1): closing CHILD SAs and the IKE SA.

    HDR, SK {D(ESP, our inbound SPIs)}  -->  <--  HDR, SK {D(ESP, the peer's inbound SPIs)}
    HDR, SK {D(IKE)}                    -->  <--  HDR, SK {}

A responder includes in its answer the SPIs of the pairs it closes, except those it is deleting
itself already (simultaneous deletes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.delete import DeletePayload
from ike.proto.v2.payloads.header import INFORMATIONAL
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.payloads.sa import PROTO_AH, PROTO_ESP, PROTO_IKE
from ike.proto.v2.state import ChildState, IkeSa, IkeState

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine


class DeleteChild(Task):
    exchange = INFORMATIONAL
    name = "INFORMATIONAL (delete child SA)"
    runs_in = frozenset({IkeState.ESTABLISHED, IkeState.REKEYED})

    def __init__(self, child_id: int, reason: str, resend: bool = False) -> None:
        self.child_id = child_id
        self.reason = reason
        self.resend = resend

    def restart(self, eng: Ikev2Engine) -> Task | None:
        return DeleteChild(self.child_id, self.reason, resend=True)

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        child = eng.find_child(self.child_id)
        if child is None or child.state is ChildState.DELETED:
            return None
        if child.state is ChildState.DELETING and not self.resend:
            return None
        child.set_state(ChildState.DELETING)
        proto = PROTO_AH if child.protocol == "ah" else PROTO_ESP
        return [DeletePayload(protocol=proto, spis=[child.spi_in])]

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        child = eng.find_child(self.child_id)
        if child is not None:
            eng.remove_child(sa, child, self.reason)
        return Result.DONE


class DeleteRefused(Task):
    """Close a child SA the peer created for our request but we refused (a proposal we did not
    offer, a bad PFS value, selectors outside ours): we never installed it, so it is named by our
    inbound SPI of the offer, which the peer holds as its outbound one. Without this the peer keeps
    an SA nobody uses until it expires."""

    exchange = INFORMATIONAL
    name = "INFORMATIONAL (delete a refused child SA)"
    runs_in = frozenset({IkeState.ESTABLISHED, IkeState.REKEYED})

    def __init__(self, protocol: int, spi: bytes) -> None:
        self.protocol, self.spi = protocol, spi

    def restart(self, eng: Ikev2Engine) -> Task | None:
        return DeleteRefused(self.protocol, self.spi)

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        return [DeletePayload(protocol=self.protocol, spis=[self.spi])]

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        eng.release_child_spi(self.spi)
        return Result.DONE


class DeleteIke(Task):
    exchange = INFORMATIONAL
    name = "INFORMATIONAL (delete IKE SA)"
    runs_in = frozenset({IkeState.ESTABLISHED, IkeState.REKEYED})

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        eng.set_state(sa, IkeState.DELETING)
        return [DeletePayload(protocol=PROTO_IKE)]

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        eng.kill_sa(sa, self.reason, now)
        return Result.DONE

    def give_up(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> None:
        eng.kill_sa(sa, self.reason, now)  # §1.4.1: the SA is gone either way


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Reply:
    dels = msg.all(DeletePayload)
    if any(d.protocol == PROTO_IKE for d in dels):
        reason = "rekeyed" if sa.state is IkeState.REKEYED else "deleted by peer"
        return Reply([], [lambda: eng.kill_sa(sa, reason, now)])
    answer: dict[int, list[bytes]] = {}
    for d in dels:
        for spi in d.spis:
            child = eng.child_by_outbound_spi(sa, spi)
            if child is None or child.state is ChildState.DELETED:
                if child is None:
                    eng.note_deleted_early(spi, now)
                continue
            if child.state is not ChildState.DELETING:
                answer.setdefault(d.protocol, []).append(child.spi_in)
            reason = "rekeyed" if child.state is ChildState.REKEYED else "deleted by peer"
            eng.remove_child(sa, child, reason)
    return Reply([DeletePayload(protocol=p, spis=s) for p, s in answer.items()])
