"""SA payload: proposals and transforms (RFC 7296 §3.3)."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ike.proto.v2.payloads.base import SA, DecodeError, Payload, register

PROTO_IKE = 1
PROTO_AH = 2
PROTO_ESP = 3
PROTO_NAMES = {PROTO_IKE: "IKE", PROTO_AH: "AH", PROTO_ESP: "ESP"}

# Transform types
ENCR = 1
PRF = 2
INTEG = 3
DH = 4
ESN = 5
TRANSFORM_TYPE_NAMES = {ENCR: "ENCR", PRF: "PRF", INTEG: "INTEG", DH: "DH", ESN: "ESN"}

ATTR_KEY_LENGTH = 14


class Transform(NamedTuple):
    """A tuple, not a dataclass: proposals hold many and matching compares them."""

    type: int
    id: int
    keylen: int | None = None  # the Key Length attribute, bits

    def encode(self, last: bool) -> bytes:
        attrs = b"" if self.keylen is None else struct.pack("!HH", 0x8000 | ATTR_KEY_LENGTH, self.keylen)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


_PROPOSAL_HEAD = struct.Struct("!BBHBBBB")  # more, reserved, length, number, protocol, SPI size, transforms


@functools.lru_cache(maxsize=256)
def _encode_transforms(transforms: tuple[Transform, ...]) -> bytes:
    # Our proposals are the same few in every negotiation: each transform list is encoded once.
    return b"".join(t.encode(i == len(transforms) - 1) for i, t in enumerate(transforms))


@dataclass(slots=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform] = field(default_factory=list)

    def of_type(self, ttype: int) -> list[Transform]:
        return [t for t in self.transforms if t.type == ttype]

    def encode(self, last: bool) -> bytes:
        body = _encode_transforms(tuple(self.transforms))
        hdr_len = 8 + len(self.spi)
        return (
            _PROPOSAL_HEAD.pack(
                0 if last else 2,
                0,
                hdr_len + len(body),
                self.number,
                self.protocol,
                len(self.spi),
                len(self.transforms),
            )
            + self.spi
            + body
        )


def _decode_transforms(data: bytes, count: int, pnum: int) -> tuple[Transform, ...]:
    out: list[Transform] = []
    pos, end = 0, len(data)
    unpack = struct.unpack_from
    last = False
    while pos < end:
        if last:
            raise DecodeError(f"proposal {pnum}: data after the last transform")
        if pos + 8 > end:
            raise DecodeError(f"proposal {pnum}: transform header truncated")
        more, _r, length, ttype, _r2, tid = unpack("!BBHBBH", data, pos)
        if more != 0 and more != 3:
            raise DecodeError(f"proposal {pnum}: transform 'last substructure' is {more}, must be 0 or 3")
        if length < 8 or pos + length > end:
            raise DecodeError(f"proposal {pnum}: transform length {length} does not fit")
        keylen: int | None = None
        apos, tend = pos + 8, pos + length
        while apos < tend:
            if apos + 4 > tend:
                raise DecodeError(f"proposal {pnum}: transform attribute truncated")
            atype, aval = unpack("!HH", data, apos)
            if atype & 0x8000:
                # An unknown attribute makes the transform unusable (§3.3.6): -1 never matches.
                keylen = aval if atype & 0x7FFF == ATTR_KEY_LENGTH else -1
                apos += 4
            else:
                if apos + 4 + aval > tend:
                    raise DecodeError(f"proposal {pnum}: transform attribute length {aval} does not fit")
                keylen = -1
                apos += 4 + aval
        out.append(Transform(ttype, tid, keylen))
        last = more == 0
        pos = tend
    if not last and count:
        raise DecodeError(f"proposal {pnum}: last transform is not marked last")
    if len(out) != count:
        raise DecodeError(f"proposal {pnum} says {count} transforms but carries {len(out)}")
    return tuple(out)


# A peer offers the same transforms in every negotiation (only the SPI before them changes): each
# distinct list of an ordinary size is parsed once (Transforms are immutable; a DecodeError is not cached).
_cached_transforms = functools.lru_cache(maxsize=512)(_decode_transforms)


@register
@dataclass(slots=True)
class SaPayload(Payload):
    TYPE = SA
    proposals: list[Proposal] = field(default_factory=list)

    def encode_body(self) -> bytes:
        props = self.proposals
        if len(props) == 1:  # a responder's choice, the usual case
            return props[0].encode(True)
        return b"".join(p.encode(i == len(props) - 1) for i, p in enumerate(props))

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> SaPayload:
        props: list[Proposal] = []
        pos = 0
        last = False
        while pos < len(data):
            if last:
                raise DecodeError("SA payload has data after the last proposal")
            if len(data) - pos < 8:
                raise DecodeError(f"proposal header is {len(data) - pos} bytes, needs at least 8")
            more, _r, length, num, proto, spi_size, ntrans = _PROPOSAL_HEAD.unpack_from(data, pos)
            if more not in (0, 2):
                raise DecodeError(f"proposal 'last substructure' is {more}, must be 0 or 2")
            if length < 8 + spi_size or pos + length > len(data):
                raise DecodeError(f"proposal {num} length {length} does not fit")
            if spi_size not in (0, 4, 8):
                raise DecodeError(f"proposal {num} SPI size {spi_size} is not 0, 4 or 8")
            spi = data[pos + 8 : pos + 8 + spi_size]
            tdata = data[pos + 8 + spi_size : pos + length]
            decode = _cached_transforms if len(tdata) <= 512 else _decode_transforms
            transforms = decode(tdata, ntrans, num)
            props.append(Proposal(num, proto, spi, list(transforms)))
            last = more == 0
            pos += length
        if not props:
            raise DecodeError("SA payload has no proposals")
        if not last:
            raise DecodeError("SA payload's last proposal is not marked last")
        return cls(False, props)  # critical, proposals
