"""The generic payload chain (RFC 2408 §3.2): next payload (1), reserved (1), length (2), body."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Protocol, runtime_checkable

from ike.proto.v1.payloads.errors import DecodeError
from ike.proto.v1.payloads.types import PayloadType


@runtime_checkable
class Payload(Protocol):
    TYPE: ClassVar[int]

    def body(self) -> bytes: ...


@dataclass(frozen=True)
class RawPayload:
    """A payload type we do not interpret (kept so that hashes over the message stay right)."""

    ptype: int
    data: bytes
    TYPE: ClassVar[int] = -1

    def body(self) -> bytes:
        return self.data


class Decoded(NamedTuple):  # a tuple: one is built for every payload received (a frozen dataclass costs twice that)
    payload: object  # one of the payload classes, or RawPayload
    type: int
    raw: bytes  # the whole payload, generic header included (for HASH computations)

    @property
    def body(self) -> bytes:
        return self.raw[4:]


def _parsers() -> dict[int, object]:
    from ike.proto.v1.payloads import (
        attributes,
        cert,
        delete,
        hash,
        id,
        ke,
        natd,
        nonce,
        notify,
        sa,
        sig,
        vendor,
    )  # fmt: skip

    return {
        PayloadType.SA: sa.SaPayload.parse,
        PayloadType.KE: ke.KePayload.parse,
        PayloadType.ID: id.IdPayload.parse,
        PayloadType.CERT: cert.CertPayload.parse,
        PayloadType.CERTREQ: cert.CertReqPayload.parse,
        PayloadType.HASH: hash.HashPayload.parse,
        PayloadType.SIG: sig.SigPayload.parse,
        PayloadType.NONCE: nonce.NoncePayload.parse,
        PayloadType.NOTIFY: notify.NotifyPayload.parse,
        PayloadType.DELETE: delete.DeletePayload.parse,
        PayloadType.VENDOR_ID: vendor.VendorIdPayload.parse,
        PayloadType.ATTRIBUTE: attributes.AttributePayload.parse,
        PayloadType.NAT_D: natd.NatDPayload.parse,
        PayloadType.NAT_D_DRAFT: natd.NatDPayload.parse_draft,
        PayloadType.NAT_OA: id.NatOaPayload.parse,
        PayloadType.NAT_OA_DRAFT: id.NatOaPayload.parse,
    }


_PARSERS: dict[int, object] = {}
MAX_PAYLOADS = 64
_GENERIC = struct.Struct("!BBH")  # next payload, reserved, length
_SA_INNER = (int(PayloadType.PROPOSAL), int(PayloadType.TRANSFORM))  # plain ints: no enum lookups per payload


def decode_chain(first: int, data: bytes, trailing_ok: int = 0) -> list[Decoded]:
    """Decode the chain starting with payload type `first`. `trailing_ok` bytes of padding may follow
    the last payload (decrypted messages are padded to the cipher block)."""
    if not _PARSERS:
        _PARSERS.update(_parsers())
    parsers = _PARSERS
    out: list[Decoded] = []
    pos, np = 0, first
    end = len(data)
    while np != 0:  # PayloadType.NONE
        if len(out) >= MAX_PAYLOADS:
            raise DecodeError(f"more than {MAX_PAYLOADS} payloads in one message")
        if np in _SA_INNER:
            raise DecodeError(f"payload type {np} may only appear inside an SA payload")
        if pos + 4 > end:
            raise DecodeError(f"payload {np} header runs past the end of the message")
        nxt, _reserved, length = _GENERIC.unpack_from(data, pos)
        if length < 4 or pos + length > end:
            raise DecodeError(f"payload {np} length {length} is invalid for the {end - pos} bytes left")
        raw = data[pos : pos + length]
        parser = parsers.get(np)
        obj = parser(raw[4:]) if parser is not None else RawPayload(np, raw[4:])  # type: ignore[operator]
        out.append(Decoded(obj, np, raw))
        pos += length
        np = nxt
    if end - pos > trailing_ok:
        raise DecodeError(f"{len(data) - pos} unexpected bytes after the last payload")
    return out


def encode_chain(payloads: list[object]) -> tuple[int, bytes, list[bytes]]:
    """(first payload type, the chain, each payload's bytes with its generic header)."""
    types: list[int] = [p.ptype if isinstance(p, RawPayload) else p.TYPE for p in payloads]  # type: ignore[attr-defined]
    bodies: list[bytes] = [p.body() for p in payloads]  # type: ignore[attr-defined]
    types.append(0)  # what follows the last payload
    pack = _GENERIC.pack
    raws: list[bytes] = []
    for i, body in enumerate(bodies):
        if len(body) + 4 > 0xFFFF:
            raise ValueError("payload too large")
        raws.append(pack(types[i + 1], 0, len(body) + 4) + body)
    return types[0], b"".join(raws), raws
