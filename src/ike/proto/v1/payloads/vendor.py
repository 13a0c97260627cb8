"""Vendor ID (RFC 2408 §3.16)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class VendorIdPayload:
    TYPE: ClassVar[int] = 13
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> VendorIdPayload:
        if not body:
            raise DecodeError("empty vendor payload")
        return cls(bytes(body))
