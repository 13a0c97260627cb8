"""Vendor ID payload (RFC 7296 §3.12): accepted and ignored; we send none."""

from __future__ import annotations

from dataclasses import dataclass

from ike.proto.v2.payloads.base import VENDOR, Payload, register


@register
@dataclass(slots=True)
class VendorIdPayload(Payload):
    TYPE = VENDOR
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> VendorIdPayload:
        return cls(data=data)
