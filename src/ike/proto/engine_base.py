"""What every engine (v1/, v2/) hands to the daemon: an outbox of datagrams and a queue of events.

Both are drained by the daemon (`datagrams_to_send`, `next_event`, see ike.proto.api) and filled by
the engine and its exchanges through `send_raw` and `emit`, so there is one place where output leaves.
"""

from __future__ import annotations

from collections import deque

from ike.proto.api import Address, Datagram, Event


class EngineOutput:
    def __init__(self) -> None:
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def emit(self, ev: Event) -> None:
        self._events.append(ev)

    def send_raw(self, data: bytes, local: Address, remote: Address) -> None:
        self._out.append(Datagram(data, local, remote))
