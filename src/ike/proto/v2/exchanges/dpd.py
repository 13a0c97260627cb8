"""INFORMATIONAL without Delete: liveness checks (RFC 7296 §1.4, dead peer detection) and notifies.

    HDR, SK {}  -->  <--  HDR, SK {}

We send an empty request when nothing was heard from the peer for the policy's DPD delay; when it
goes unanswered after all retransmissions, the engine applies the policy's DPD action.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.header import INFORMATIONAL
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.state import IkeSa

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine


class Dpd(Task):
    exchange = INFORMATIONAL
    name = "INFORMATIONAL (liveness check)"

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        return []

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        return Result.DONE

    def give_up(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> None:
        eng.dpd_failed(sa, now)


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Reply:
    # Status notifies we do not act on are ignored (§3.10.1); errors are logged by the engine.
    return Reply([])
