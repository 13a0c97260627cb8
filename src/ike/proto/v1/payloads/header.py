"""The ISAKMP header (RFC 2408 §3.1): 28 bytes in front of every message."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ike.proto.v1.payloads.errors import DecodeError

HEADER_LEN = 28
VERSION = 0x10  # major 1, minor 0
_FMT = "!8s8sBBBBII"
_STRUCT = struct.Struct(_FMT)
# The flag bits as plain ints, for the per-message paths (`&` on an IntFlag runs Python code).
FLAG_ENCRYPTION, FLAG_COMMIT = 1, 2


class Exchange(enum.IntEnum):
    MAIN = 2  # Identity Protection
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    TRANSACTION = 6  # mode config / XAUTH: recognised, refused
    QUICK = 32


class Flags(enum.IntFlag):
    NONE = 0
    ENCRYPTION = 1
    COMMIT = 2
    AUTH_ONLY = 4


@dataclass(frozen=True)
class Header:
    cky_i: bytes
    cky_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0
    version: int = VERSION

    def encode(self, length: int) -> bytes:
        return _STRUCT.pack(
            self.cky_i, self.cky_r, self.next_payload, self.version, self.exchange, self.flags, self.message_id,
            length,
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_LEN:
            raise DecodeError(f"message is {len(data)} bytes, shorter than the 28-byte ISAKMP header")
        cky_i, cky_r, np, ver, exch, flags, mid, length = _STRUCT.unpack_from(data)
        if ver >> 4 != 1:
            raise DecodeError(f"ISAKMP major version {ver >> 4} is not 1")
        if length != len(data):
            raise DecodeError(f"header length {length} does not match the datagram's {len(data)} bytes")
        if cky_i == bytes(8):
            raise DecodeError("initiator cookie is zero")
        if flags & ~0x07:
            raise DecodeError(f"unknown header flags 0x{flags:02x}")
        return cls(cky_i, cky_r, np, exch, flags, mid, length, ver)


def encode_header(cky_i: bytes, cky_r: bytes, next_payload: int, exchange: int, flags: int, message_id: int,
                  length: int) -> bytes:  # fmt: skip
    """`Header(...).encode(length)` without building the Header (what every outgoing message needs)."""
    return _STRUCT.pack(cky_i, cky_r, next_payload, VERSION, exchange, flags, message_id, length)
