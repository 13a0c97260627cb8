"""Whole IKEv2 messages: header + payload chain, plaintext or encrypted (see sk.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ike.proto.v2.payloads.base import (
    SK,
    SKF,
    DecodeError,
    Payload,
    RawBody,
    UnknownPayload,
    decode_chain,
    encode_chain,
)
from ike.proto.v2.payloads.header import HEADER_LEN, IkeHeader
from ike.proto.v2.payloads.notify import NotifyPayload

P = TypeVar("P", bound=Payload)


@dataclass(slots=True)
class Message:
    header: IkeHeader
    payloads: list[Payload] = field(default_factory=list)
    raw: bytes = b""
    # Built on first use, the payloads being fixed by then: the first notify of each type, and the
    # first payload of each exact class (a request is asked for a dozen payloads by class).
    _notify_map: dict[int, NotifyPayload] | None = field(default=None, repr=False, compare=False)
    _first: dict[type[Payload], Payload] | None = field(default=None, repr=False, compare=False)

    def _index(self) -> dict[type[Payload], Payload]:
        # Built back to front, so that the first payload of a type (or notify type) is the one kept.
        rev = self.payloads[::-1]
        first = {type(p): p for p in rev}
        self._notify_map = {p.notify_type: p for p in rev if type(p) is NotifyPayload}
        self._first = first
        return first

    def get(self, cls: type[P]) -> P | None:
        if not cls.__subclasses__():  # no subclass instance can come first: the index answers
            first = self._first
            if first is None:
                first = self._index()
            return first.get(cls)  # type: ignore[return-value]
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notify(self, ntype: int) -> NotifyPayload | None:
        if self._notify_map is None:
            self._index()
        return self._notify_map.get(ntype) if self._notify_map is not None else None

    def unsupported_critical(self) -> UnknownPayload | None:
        """The first payload of a type we do not implement that has the critical bit (§2.5)."""
        if self.get(UnknownPayload) is None:  # the usual case, answered by the index
            return None
        for p in self.payloads:
            if type(p) is UnknownPayload and p.critical:
                return p
        return None

    def notifies(self) -> list[NotifyPayload]:
        return [p for p in self.payloads if isinstance(p, NotifyPayload)]

    def error_notify(self) -> NotifyPayload | None:
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.is_error:
                return p
        return None


def encode_plain(header: IkeHeader, payloads: Sequence[Payload]) -> bytes:
    first, body = encode_chain(payloads)
    header.next_payload = first
    return header.encode(HEADER_LEN + len(body)) + body


def decode_outer(data: bytes) -> tuple[IkeHeader, list[Payload]]:
    """Header and outer payload chain; an SK/SKF payload comes back as RawBody (last element)."""
    header = IkeHeader.decode(data)
    if header.version >> 4 != 2:
        raise DecodeError(f"IKE major version {header.version >> 4} is not 2")
    return header, decode_chain(header.next_payload, data[HEADER_LEN:], HEADER_LEN)


def encrypted_part(payloads: Sequence[Payload]) -> RawBody | None:
    if payloads and isinstance(payloads[-1], RawBody) and payloads[-1].ptype in (SK, SKF):
        return payloads[-1]
    return None
