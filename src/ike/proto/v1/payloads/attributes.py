"""Data attributes (RFC 2408 §3.3) and the Attribute payload (type 14, mode config / XAUTH).

An attribute is TV (AF bit set: 2-byte type, 2-byte value) or TLV (2-byte type, 2-byte length,
value). Integers that fit 16 bits are sent as TV, longer ones (lifetimes) as TLV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError

_AF = 0x8000
_TL = struct.Struct("!HH")  # type and value (TV) or type and length (TLV)


@dataclass(frozen=True)
class Attr:
    type: int
    value: int | bytes

    def encode(self) -> bytes:
        if isinstance(self.value, int):
            if 0 <= self.value <= 0xFFFF:
                return _TL.pack(self.type | _AF, self.value)
            n = max(4, (self.value.bit_length() + 7) // 8)
            return _TL.pack(self.type, n) + self.value.to_bytes(n, "big")
        return _TL.pack(self.type, len(self.value)) + self.value

    def as_int(self) -> int:
        """The value as an integer; variable-length integers may be up to 8 bytes (RFC 2407 §4.5)."""
        if isinstance(self.value, int):
            return self.value
        if not 1 <= len(self.value) <= 8:
            raise DecodeError(f"attribute {self.type}: {len(self.value)}-byte integer is not 1-8 bytes")
        return int.from_bytes(self.value, "big")


def encode_attrs(attrs: list[Attr] | tuple[Attr, ...]) -> bytes:
    return b"".join([a.encode() for a in attrs])


def decode_attrs(data: bytes) -> tuple[Attr, ...]:
    out: list[Attr] = []
    pos = 0
    end = len(data)
    unpack = _TL.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("data attribute header is truncated")
        t, v = unpack(data, pos)
        pos += 4
        if t & _AF:
            out.append(Attr(t & ~_AF, v))
        else:
            if pos + v > end:
                raise DecodeError(f"data attribute {t} length {v} runs past its payload")
            out.append(Attr(t, data[pos : pos + v]))
            pos += v
    return tuple(out)


@dataclass(frozen=True)
class AttributePayload:
    """Configuration attributes (draft-ietf-ipsec-isakmp-mode-cfg); decoded so it can be refused cleanly."""

    TYPE: ClassVar[int] = 14
    cfg_type: int
    identifier: int
    attrs: tuple[Attr, ...] = ()

    def body(self) -> bytes:
        return struct.pack("!BBH", self.cfg_type, 0, self.identifier) + encode_attrs(self.attrs)

    @classmethod
    def parse(cls, body: bytes) -> AttributePayload:
        if len(body) < 4:
            raise DecodeError("attribute payload shorter than 4 bytes")
        t, _, ident = struct.unpack_from("!BBH", body)
        return cls(t, ident, decode_attrs(body[4:]))
