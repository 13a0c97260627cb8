"""Nonce payload (RFC 7296 §3.9): 16 to 256 bytes."""

from __future__ import annotations

from dataclasses import dataclass

from ike.proto.v2.payloads.base import NONCE, DecodeError, Payload, register


@register
@dataclass(slots=True)
class NoncePayload(Payload):
    TYPE = NONCE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> NoncePayload:
        if not 16 <= len(data) <= 256:
            raise DecodeError(f"nonce is {len(data)} bytes, must be 16 to 256")
        return cls(False, data)  # critical, data
