"""How an exchange step reports trouble to the engine (never past it)."""

from __future__ import annotations


class ExchangeFailed(Exception):
    """The negotiation cannot go on. `notify` is the notify type to tell the peer (if any);
    `offered` / `peer_offered` carry both sides' offers for a mismatch."""

    def __init__(
        self,
        reason: str,
        notify: int | None = None,
        offered: tuple[str, ...] = (),
        peer_offered: tuple[str, ...] = (),
        received_notify: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify
        self.offered = offered
        self.peer_offered = peer_offered
        self.received_notify = received_notify


class Drop(Exception):
    """This datagram is refused (malformed, unexpected, failed a check); the exchange goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
