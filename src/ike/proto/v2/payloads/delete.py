"""Delete payload (RFC 7296 §3.11)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ike.proto.v2.payloads.base import DELETE, DecodeError, Payload, need, register
from ike.proto.v2.payloads.sa import PROTO_IKE


@register
@dataclass(slots=True)
class DeletePayload(Payload):
    TYPE = DELETE
    protocol: int = PROTO_IKE
    spis: list[bytes] = field(default_factory=list)

    def encode_body(self) -> bytes:
        size = 0 if self.protocol == PROTO_IKE else 4
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> DeletePayload:
        need(data, 4, "Delete payload")
        proto, size, count = struct.unpack_from("!BBH", data)
        expected = 0 if proto == PROTO_IKE else 4
        if size != expected:
            raise DecodeError(f"Delete payload for protocol {proto} has SPI size {size}, expected {expected}")
        if proto == PROTO_IKE and count:
            raise DecodeError("Delete payload for the IKE SA must carry no SPIs")
        if len(data) != 4 + size * count:
            raise DecodeError(f"Delete payload announces {count} SPIs but has {len(data) - 4} bytes for them")
        return cls(protocol=proto, spis=[data[4 + i * size : 4 + (i + 1) * size] for i in range(count)])
