"""The generic payload header (RFC 7296 §3.2), the payload registry and chain encoding/decoding.

Every payload family module defines a dataclass deriving from `Payload` with `encode_body()` and
`decode_body()`, registered by type number. Decoding is strict: any length that does not add up
raises `DecodeError`, the single error type of the codec.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

# Payload type numbers (RFC 7296 §3.2, RFC 7383).
NONE = 0
SA = 33
KE = 34
IDI = 35
IDR = 36
CERT = 37
CERTREQ = 38
AUTH = 39
NONCE = 40
NOTIFY = 41
DELETE = 42
VENDOR = 43
TSI = 44
TSR = 45
SK = 46
CP = 47
EAP = 48
SKF = 53

PAYLOAD_NAMES = {
    SA: "SA",
    KE: "KE",
    IDI: "IDi",
    IDR: "IDr",
    CERT: "CERT",
    CERTREQ: "CERTREQ",
    AUTH: "AUTH",
    NONCE: "Nonce",
    NOTIFY: "N",
    DELETE: "D",
    VENDOR: "V",
    TSI: "TSi",
    TSR: "TSr",
    SK: "SK",
    CP: "CP",
    EAP: "EAP",
    SKF: "SKF",
}


class DecodeError(ValueError):
    """A message or payload that does not parse; the text says which field and why."""


@dataclass(slots=True)
class Payload:
    """`critical` is every payload's first field: the decoders, on the hot path, construct positionally
    (a dataclass __init__ takes keyword arguments at twice the cost)."""

    TYPE: ClassVar[int] = 0
    # Bytes of this payload as received (generic header included): AUTH needs the ID payload body.
    critical: bool = False

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> Payload:
        raise NotImplementedError


P = TypeVar("P", bound=Payload)

_REGISTRY: dict[int, type[Payload]] = {}


def register(cls: type[P]) -> type[P]:
    if cls.TYPE in (SK, SKF):
        raise ValueError("SK and SKF payloads are decoded by sk.py, not registered")
    _REGISTRY[cls.TYPE] = cls
    return cls


@dataclass(slots=True)
class UnknownPayload(Payload):
    """A payload type we do not implement; kept so the caller can apply the critical bit rule."""

    ptype: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data


@dataclass(slots=True)
class RawBody(Payload):
    """An SK or SKF payload undecoded: decryption needs the enclosing message (sk.py)."""

    ptype: int = 0
    inner_next: int = 0  # the SK/SKF payload's Next Payload: the first inner payload's type
    offset: int = 0  # where this payload's body starts in the whole message
    data: bytes = b""


_RAW_TYPES = (UnknownPayload, RawBody)  # classes whose payload type is per instance (`ptype`)
_GENERIC = struct.Struct("!BBH")  # Next Payload, flags, Payload Length


def payload_type(p: Payload) -> int:
    return p.ptype if type(p) in _RAW_TYPES else p.TYPE  # type: ignore[attr-defined]


def encode_chain(payloads: Sequence[Payload], last_next: int = NONE) -> tuple[int, bytes]:
    """(type of the first payload, encoded chain); `last_next` is the last one's Next Payload."""
    if not payloads:
        return NONE, b""
    parts: list[bytes] = []
    pack = _GENERIC.pack
    following = last_next
    # Built back to front: each payload's Next Payload is the type of the one encoded before it.
    for p in reversed(payloads):
        body = p.encode_body()
        parts.append(body)
        parts.append(pack(following, 0x80 if p.critical else 0, 4 + len(body)))
        following = p.TYPE or payload_type(p)  # the call only for a class without its own TYPE
    parts.reverse()
    return following, b"".join(parts)


def decode_chain(first: int, data: bytes, base_offset: int = 0) -> list[Payload]:
    """Decode a payload chain. An SK/SKF payload must be the last; its body is returned raw."""
    out: list[Payload] = []
    nxt, pos, end = first, 0, len(data)
    unpack, registry, append = _GENERIC.unpack_from, _REGISTRY, out.append
    while nxt != NONE:
        if pos + 4 > end:
            raise DecodeError(f"payload {PAYLOAD_NAMES.get(nxt, nxt)} header truncated at offset {pos}")
        following, flags, length = unpack(data, pos)
        stop = pos + length
        if length < 4 or stop > end:
            raise DecodeError(
                f"payload {PAYLOAD_NAMES.get(nxt, nxt)} length {length} does not fit "
                f"({end - pos} bytes left at offset {pos})"
            )
        cls = registry.get(nxt)  # SK and SKF are never registered: they are the RawBody case below
        if cls is not None:
            try:
                p: Payload = cls.decode_body(data[pos + 4 : stop], nxt)
            except DecodeError:
                raise
            except (ValueError, IndexError, struct.error) as e:
                raise DecodeError(f"payload {PAYLOAD_NAMES.get(nxt, nxt)} is malformed: {e}") from None
            if flags & 0x80:
                p.critical = True
            append(p)
        elif nxt in (SK, SKF):
            if stop != end:
                raise DecodeError(f"{PAYLOAD_NAMES[nxt]} payload is not the last payload")
            out.append(RawBody(flags & 0x80 != 0, nxt, following, base_offset + pos + 4, data[pos + 4 : stop]))
            return out
        else:
            append(UnknownPayload(flags & 0x80 != 0, nxt, data[pos + 4 : stop]))
        nxt = following
        pos = stop
    if pos != end:
        raise DecodeError(f"{end - pos} bytes of trailing data after the last payload")
    return out


def need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise DecodeError(f"{what} is {len(data)} bytes, needs at least {n}")
