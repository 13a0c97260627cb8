"""Identification payloads IDi / IDr (RFC 7296 §3.5). Identity text <-> wire is ike.proto.identity."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ike.proto.v2.payloads.base import IDI, IDR, Payload, need, register


@dataclass(slots=True)
class IdPayload(Payload):
    id_type: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> IdPayload:
        need(data, 5, "ID payload")
        c = IdiPayload if ptype == IDI else IdrPayload
        return c(False, data[0], data[4:])  # critical, id_type, data


@register
@dataclass(slots=True)
class IdiPayload(IdPayload):
    TYPE = IDI


@register
@dataclass(slots=True)
class IdrPayload(IdPayload):
    TYPE = IDR
