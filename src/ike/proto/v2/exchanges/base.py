"""What every exchange has in common: the initiator-side `Task` (strongSwan's build_i/process_i).

An IKE SA holds a queue of tasks and runs one at a time (window size 1): the engine asks the first
task for its request payloads (`build_i`), sends them, and hands it the response (`process_i`).
The responder side of each exchange is a module function `process_r(engine, sa, msg, now)`
returning a `Reply` (the response payloads and what to do once it is sent).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.state import IkeSa, IkeState

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine


class Result(enum.Enum):
    DONE = "done"
    RETRY = "retry"  # build and send the request again (COOKIE, INVALID_KE_PAYLOAD)


class Task:
    exchange: int = 0
    name: str = "task"
    # States of the IKE SA in which this task may start.
    runs_in: frozenset[IkeState] = frozenset({IkeState.ESTABLISHED})

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        """Request payloads, or None when the task no longer applies (it is dropped)."""
        raise NotImplementedError

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        raise NotImplementedError

    def restart(self, eng: Ikev2Engine) -> Task | None:
        """A fresh task doing the same work, when the IKE SA this one ran on was closed after a
        rekey with it unfinished (the work then moves to the new IKE SA); None to drop it."""
        return None

    def give_up(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> None:
        """No response after all retransmissions: by default the peer is gone (§2.4)."""
        eng.peer_unreachable(
            sa, f"no response to {self.name} after {eng.settings.retransmit_tries} retransmissions", now
        )


@dataclass
class Reply:
    payloads: list[Payload]
    after: list[Callable[[], None]] = field(default_factory=list)
