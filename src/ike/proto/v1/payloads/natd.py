"""NAT-D (RFC 3947 §3.2): HASH(CKY-I | CKY-R | IP | port); type 20, or 130 from draft peers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


@dataclass(frozen=True)
class NatDPayload:
    TYPE: ClassVar[int] = 20
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> NatDPayload:
        if not 16 <= len(body) <= 64:
            raise DecodeError(f"NAT-D hash of {len(body)} bytes is not 16-64")
        return cls(bytes(body))

    @classmethod
    def parse_draft(cls, body: bytes) -> NatDPayload:
        return NatDDraftPayload(cls.parse(body).data)


@dataclass(frozen=True)
class NatDDraftPayload(NatDPayload):
    TYPE: ClassVar[int] = 130
