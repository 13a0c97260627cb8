"""SA, Proposal and Transform payloads (RFC 2408 §3.4-3.6), with the IPsec DOI (RFC 2407 §4.2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from ike.proto.v1.payloads.attributes import Attr, decode_attrs, encode_attrs
from ike.proto.v1.payloads.errors import DecodeError

DOI_IPSEC = 1
SIT_IDENTITY_ONLY = 1

# Protocol IDs (RFC 2407 §4.4.1)
PROTO_ISAKMP = 1
PROTO_AH = 2
PROTO_ESP = 3
KEY_IKE = 1  # the one phase 1 transform ID

_BBH = struct.Struct("!BBH")  # a generic payload header; a transform's number, ID and reserved field
_PROPOSAL = struct.Struct("!BBHBBBB")  # generic header, number, protocol, SPI size, transform count
_TRANSFORM = struct.Struct("!BBHBBH")  # generic header, number, transform ID, reserved
_DOI_SIT = struct.Struct("!II")


@dataclass(frozen=True)
class Transform:
    number: int
    transform_id: int
    attrs: tuple[Attr, ...] = ()

    def attr(self, t: int) -> Attr | None:
        for a in self.attrs:
            if a.type == t:
                return a
        return None

    def encode(self, last: bool) -> bytes:
        body = _BBH.pack(self.number, self.transform_id, 0) + encode_attrs(self.attrs)
        return _BBH.pack(0 if last else 3, 0, len(body) + 4) + body


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool) -> bytes:
        last_t = len(self.transforms) - 1
        ts = b"".join([t.encode(i == last_t) for i, t in enumerate(self.transforms)])
        body = struct.pack("!BBBB", self.number, self.protocol, len(self.spi), len(self.transforms)) + self.spi + ts
        return _BBH.pack(0 if last else 2, 0, len(body) + 4) + body


@dataclass(frozen=True)
class SaPayload:
    TYPE: ClassVar[int] = 1
    proposals: tuple[Proposal, ...]
    doi: int = DOI_IPSEC
    situation: int = SIT_IDENTITY_ONLY
    extra: bytes = field(default=b"", compare=False)  # labelled-domain situation data, not used

    def body(self) -> bytes:
        last_p = len(self.proposals) - 1
        ps = b"".join([p.encode(i == last_p) for i, p in enumerate(self.proposals)])
        return _DOI_SIT.pack(self.doi, self.situation) + ps

    @classmethod
    def parse(cls, body: bytes) -> SaPayload:
        if len(body) < 8:
            raise DecodeError("SA payload shorter than DOI and situation")
        doi, sit = _DOI_SIT.unpack_from(body)
        if doi != DOI_IPSEC:
            raise DecodeError(f"SA payload DOI {doi} is not the IPsec DOI (1)")
        if sit != SIT_IDENTITY_ONLY:
            raise DecodeError(f"SA situation {sit} is not SIT_IDENTITY_ONLY (1)")
        proposals: list[Proposal] = []
        pos, np = 8, 2
        if pos == len(body):
            raise DecodeError("SA payload has no proposal")
        while True:
            if np != 2:
                raise DecodeError(f"payload {np} inside an SA payload where a proposal was expected")
            if pos + 8 > len(body):
                raise DecodeError("proposal header is truncated")
            nxt, _, plen, pnum, proto, spi_size, nt = _PROPOSAL.unpack_from(body, pos)
            if plen < 8 + spi_size or pos + plen > len(body):
                raise DecodeError(f"proposal {pnum} length {plen} is invalid")
            spi = body[pos + 8 : pos + 8 + spi_size]
            transforms = _parse_transforms(body[pos + 8 + spi_size : pos + plen], nt, pnum)
            proposals.append(Proposal(pnum, proto, spi, transforms))
            pos += plen
            if nxt == 0:
                break
            np = nxt
            if len(proposals) > 64:
                raise DecodeError("more than 64 proposals")
        if pos != len(body):
            raise DecodeError(f"{len(body) - pos} bytes after the last proposal")
        return cls(tuple(proposals), doi, sit)


def _parse_transforms(data: bytes, count: int, pnum: int) -> tuple[Transform, ...]:
    out: list[Transform] = []
    pos = 0
    if count == 0:
        raise DecodeError(f"proposal {pnum} has no transforms")
    while pos < len(data):
        if pos + 8 > len(data):
            raise DecodeError(f"proposal {pnum}: transform header is truncated")
        nxt, _, tlen, tnum, tid, _ = _TRANSFORM.unpack_from(data, pos)
        if tlen < 8 or pos + tlen > len(data):
            raise DecodeError(f"proposal {pnum}: transform length {tlen} is invalid")
        out.append(Transform(tnum, tid, decode_attrs(data[pos + 8 : pos + tlen])))
        pos += tlen
        if nxt == 0:
            break
        if nxt != 3:
            raise DecodeError(f"proposal {pnum}: payload {nxt} where a transform was expected")
    if pos != len(data):
        raise DecodeError(f"proposal {pnum}: {len(data) - pos} bytes after the last transform")
    if len(out) != count:
        raise DecodeError(f"proposal {pnum} announces {count} transforms but carries {len(out)}")
    return tuple(out)
