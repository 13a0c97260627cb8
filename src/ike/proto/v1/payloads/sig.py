"""Signature (RFC 2408 §3.12): SIG_I/SIG_R."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class SigPayload:
    TYPE: ClassVar[int] = 9
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> SigPayload:
        if not body:
            raise DecodeError("empty sig payload")
        return cls(bytes(body))
