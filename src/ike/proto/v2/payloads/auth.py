"""Authentication payload (RFC 7296 §3.8); the AUTH value itself is computed in ike.proto.v2.auth."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ike.proto.v2.payloads.base import AUTH, Payload, need, register

RSA_SIG = 1
PSK = 2
DSS = 3
ECDSA_256 = 9
ECDSA_384 = 10
ECDSA_521 = 11
DIGITAL_SIGNATURE = 14  # RFC 7427

METHOD_NAMES = {
    RSA_SIG: "RSA signature",
    PSK: "pre-shared key",
    DSS: "DSS signature",
    ECDSA_256: "ECDSA-256",
    ECDSA_384: "ECDSA-384",
    ECDSA_521: "ECDSA-521",
    DIGITAL_SIGNATURE: "digital signature (RFC 7427)",
}


@register
@dataclass(slots=True)
class AuthPayload(Payload):
    TYPE = AUTH
    method: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> AuthPayload:
        need(data, 5, "AUTH payload")
        return cls(False, data[0], data[4:])  # critical, method, data
