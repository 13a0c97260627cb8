"""Delete payload (RFC 2408 §3.15): ISAKMP SAs by cookie pair (16-byte SPI), IPsec SAs by SPI."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class DeletePayload:
    TYPE: ClassVar[int] = 12
    protocol: int
    spis: tuple[bytes, ...]
    doi: int = 1

    def body(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return struct.pack("!IBBH", self.doi, self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def parse(cls, body: bytes) -> DeletePayload:
        if len(body) < 8:
            raise DecodeError("delete payload shorter than 8 bytes")
        doi, proto, size, n = struct.unpack_from("!IBBH", body)
        if size == 0 or len(body) - 8 != size * n:
            raise DecodeError(f"delete payload: {n} SPIs of {size} bytes do not fill {len(body) - 8} bytes")
        return cls(proto, tuple(bytes(body[8 + i * size : 8 + (i + 1) * size]) for i in range(n)), doi)
