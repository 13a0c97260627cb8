"""Key Exchange payload (RFC 7296 §3.4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ike.proto.v2.payloads.base import KE, Payload, need, register


@register
@dataclass(slots=True)
class KePayload(Payload):
    TYPE = KE
    group: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> KePayload:
        need(data, 4, "KE payload")
        (group,) = struct.unpack_from("!H", data)
        return cls(False, group, data[4:])  # critical, group, data
