"""The IKE header (RFC 7296 §3.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ike.proto.v2.payloads.base import DecodeError

IKE_SA_INIT = 34
IKE_AUTH = 35
CREATE_CHILD_SA = 36
INFORMATIONAL = 37

EXCHANGE_NAMES = {
    IKE_SA_INIT: "IKE_SA_INIT",
    IKE_AUTH: "IKE_AUTH",
    CREATE_CHILD_SA: "CREATE_CHILD_SA",
    INFORMATIONAL: "INFORMATIONAL",
}

FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20

HEADER_LEN = 28
_FMT = "!8s8sBBBBII"


@dataclass(slots=True)
class IkeHeader:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    msg_id: int
    length: int = 0
    version: int = 0x20

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """The sender is the original initiator of the IKE SA."""
        return bool(self.flags & FLAG_INITIATOR)

    def encode(self, total_length: int) -> bytes:
        return struct.pack(
            _FMT,
            self.spi_i,
            self.spi_r,
            self.next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.msg_id,
            total_length,
        )

    @classmethod
    def decode(cls, data: bytes) -> IkeHeader:
        if len(data) < HEADER_LEN:
            raise DecodeError(f"message is {len(data)} bytes, shorter than the 28-byte IKE header")
        spi_i, spi_r, nxt, ver, exch, flags, msg_id, length = struct.unpack_from(_FMT, data)
        if length != len(data):
            raise DecodeError(f"IKE header says {length} bytes but the datagram has {len(data)}")
        return cls(spi_i, spi_r, nxt, exch, flags, msg_id, length, ver)
