"""CERT and CERTREQ payloads (RFC 7296 §3.6, §3.7)."""

from __future__ import annotations

from dataclasses import dataclass

from ike.proto.v2.payloads.base import CERT, CERTREQ, Payload, need, register

X509_SIGNATURE = 4


@register
@dataclass(slots=True)
class CertPayload(Payload):
    TYPE = CERT
    encoding: int = X509_SIGNATURE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> CertPayload:
        need(data, 2, "CERT payload")
        return cls(encoding=data[0], data=data[1:])


@register
@dataclass(slots=True)
class CertReqPayload(Payload):
    """`data` for X.509 is a concatenation of SHA-1 hashes of CA public keys (SubjectPublicKeyInfo)."""

    TYPE = CERTREQ
    encoding: int = X509_SIGNATURE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> CertReqPayload:
        need(data, 1, "CERTREQ payload")
        return cls(encoding=data[0], data=data[1:])

    def authorities(self) -> list[bytes]:
        return [self.data[i : i + 20] for i in range(0, len(self.data) - 19, 20)]
