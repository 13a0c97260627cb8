"""Certificate and Certificate Request payloads (RFC 2408 §3.9, §3.10)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError

CERT_X509_SIGNATURE = 4


@dataclass(frozen=True)
class CertPayload:
    TYPE: ClassVar[int] = 6
    encoding: int
    data: bytes

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def parse(cls, body: bytes) -> CertPayload:
        if len(body) < 2:
            raise DecodeError("certificate payload carries no certificate")
        return cls(body[0], bytes(body[1:]))


@dataclass(frozen=True)
class CertReqPayload:
    TYPE: ClassVar[int] = 7
    cert_type: int
    authority: bytes = b""

    def body(self) -> bytes:
        return bytes([self.cert_type]) + self.authority

    @classmethod
    def parse(cls, body: bytes) -> CertReqPayload:
        if len(body) < 1:
            raise DecodeError("certificate request payload is empty")
        return cls(body[0], bytes(body[1:]))
