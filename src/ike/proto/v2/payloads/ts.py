"""Traffic selector payloads TSi / TSr (RFC 7296 §3.13) <-> policy.TrafficSelector."""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass, field

from ike.policy import PolicyError, TrafficSelector
from ike.proto.v2.payloads.base import TSI, TSR, DecodeError, Payload, need, register

TS_IPV4_ADDR_RANGE = 7
TS_IPV6_ADDR_RANGE = 8


_TS_HEAD = struct.Struct("!BBHHH")  # TS Type, IP Protocol ID, Selector Length, Start Port, End Port


def encode_ts(ts: TrafficSelector) -> bytes:
    start = ts.start
    t, n = (TS_IPV4_ADDR_RANGE, 16) if start.version == 4 else (TS_IPV6_ADDR_RANGE, 40)
    return _TS_HEAD.pack(t, ts.protocol, n, ts.port_start, ts.port_end) + start.packed + ts.end.packed


def _decode_selectors(data: bytes) -> tuple[TrafficSelector, ...]:
    need(data, 4, "TS payload")
    count = data[0]
    pos = 4
    out: list[TrafficSelector] = []
    for i in range(count):
        if len(data) - pos < 8:
            raise DecodeError(f"traffic selector {i + 1} is {len(data) - pos} bytes, needs at least 8")
        t, proto, length, p1, p2 = _TS_HEAD.unpack_from(data, pos)
        if t == TS_IPV4_ADDR_RANGE:
            alen = 4
        elif t == TS_IPV6_ADDR_RANGE:
            alen = 16
        else:
            raise DecodeError(f"traffic selector {i + 1} has unsupported type {t}")
        if length != 8 + 2 * alen or pos + length > len(data):
            raise DecodeError(f"traffic selector {i + 1} length {length} is wrong for type {t}")
        fam = ipaddress.IPv4Address if alen == 4 else ipaddress.IPv6Address
        start = fam(data[pos + 8 : pos + 8 + alen])
        end = fam(data[pos + 8 + alen : pos + length])
        try:
            out.append(TrafficSelector(start, end, proto, p1, p2))
        except PolicyError as e:
            raise DecodeError(f"traffic selector {i + 1}: {e}") from None
        pos += length
    if pos != len(data):
        raise DecodeError(f"TS payload has {len(data) - pos} bytes after its {count} selectors")
    if not out:
        raise DecodeError("TS payload has no selectors")
    return tuple(out)


# A peer sends the same selectors in every negotiation: each distinct body of an ordinary size is parsed
# and checked once (selectors are immutable, so the decoded ones are shared; a DecodeError is not cached).
_cached_selectors = functools.lru_cache(maxsize=512)(_decode_selectors)


@dataclass(slots=True)
class TsPayload(Payload):
    selectors: list[TrafficSelector] = field(default_factory=list)

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", len(self.selectors)) + b"".join(map(encode_ts, self.selectors))

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> TsPayload:
        c = TsiPayload if ptype == TSI else TsrPayload
        selectors = _cached_selectors(data) if len(data) <= 256 else _decode_selectors(data)
        return c(False, list(selectors))  # critical, selectors


@register
@dataclass(slots=True)
class TsiPayload(TsPayload):
    TYPE = TSI


@register
@dataclass(slots=True)
class TsrPayload(TsPayload):
    TYPE = TSR
