"""Hash (RFC 2408 §3.11): HASH_I/HASH_R or a quick mode / informational HASH(n)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class HashPayload:
    TYPE: ClassVar[int] = 8
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> HashPayload:
        if not body:
            raise DecodeError("empty hash payload")
        return cls(bytes(body))
