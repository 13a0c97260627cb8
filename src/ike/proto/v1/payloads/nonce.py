"""Nonce (RFC 2408 §3.13): 8 to 256 bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class NoncePayload:
    TYPE: ClassVar[int] = 10
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> NoncePayload:
        if not 8 <= len(body) <= 256:
            raise DecodeError(f"nonce of {len(body)} bytes is outside 8-256")
        return cls(bytes(body))
