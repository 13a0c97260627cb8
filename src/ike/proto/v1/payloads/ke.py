"""Key Exchange (RFC 2408 §3.7): the DH public value, checked by the exchange against the group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class KePayload:
    TYPE: ClassVar[int] = 4
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> KePayload:
        if not body:
            raise DecodeError("empty ke payload")
        return cls(bytes(body))
