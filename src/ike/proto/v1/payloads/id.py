"""Identification payload (RFC 2407 §4.6.2) and NAT-OA (RFC 3947 §5.2).

Phase 1 uses the identity types of `policy.IdType` (converted by `ike.proto.identity`); quick mode
uses addresses, subnets and ranges with an IP protocol and a port (`selector_to_id` / `id_to_selector`).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from ike.policy import SelectorKind, TrafficSelector
from ike.proto.v1.payloads.errors import DecodeError

ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_USER_FQDN = 3
ID_IPV4_ADDR_SUBNET = 4
ID_IPV6_ADDR = 5
ID_IPV6_ADDR_SUBNET = 6
ID_IPV4_ADDR_RANGE = 7
ID_IPV6_ADDR_RANGE = 8
ID_DER_ASN1_DN = 9
ID_KEY_ID = 11


@dataclass(frozen=True)
class IdPayload:
    TYPE: ClassVar[int] = 5
    id_type: int
    data: bytes
    protocol: int = 0
    port: int = 0

    def body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, self.protocol, self.port) + self.data

    @classmethod
    def parse(cls, body: bytes) -> IdPayload:
        if len(body) < 5:
            raise DecodeError(f"ID payload of {len(body)} bytes has no identification data")
        t, proto, port = struct.unpack_from("!BBH", body)
        return cls(t, bytes(body[4:]), proto, port)


# Our definitions' selectors (and the peer's, echoed) come back in every quick mode: encode each once.
@functools.lru_cache(maxsize=1024)
def selector_to_id(ts: TrafficSelector) -> IdPayload:
    """A quick mode ID: host -> ADDR, subnet -> ADDR_SUBNET, otherwise ADDR_RANGE. IKEv1 carries one
    port, so a selector must name a single port or all of them."""
    if ts.port_start == ts.port_end:
        port = ts.port_start
    elif (ts.port_start, ts.port_end) == (0, 65535):
        port = 0
    else:
        raise ValueError(f"selector {ts}: IKEv1 quick mode carries a single port or all ports, not a range")
    v6 = ts.version == 6
    kind = ts.kind
    if kind is SelectorKind.HOST:
        return IdPayload(ID_IPV6_ADDR if v6 else ID_IPV4_ADDR, ts.start.packed, ts.protocol, port)
    if kind is SelectorKind.SUBNET:
        size = int(ts.end) - int(ts.start) + 1
        mask = ((1 << ts.start.max_prefixlen) - 1) ^ (size - 1)
        mb = mask.to_bytes(16 if v6 else 4, "big")
        return IdPayload(ID_IPV6_ADDR_SUBNET if v6 else ID_IPV4_ADDR_SUBNET, ts.start.packed + mb, ts.protocol, port)
    return IdPayload(
        ID_IPV6_ADDR_RANGE if v6 else ID_IPV4_ADDR_RANGE, ts.start.packed + ts.end.packed, ts.protocol, port
    )


# A peer proposes the same selectors in every quick mode (the results are immutable; errors are not kept).
@functools.lru_cache(maxsize=1024)
def id_to_selector(p: IdPayload) -> TrafficSelector:
    """Decode a quick mode ID; DecodeError for types that are not addresses or for bad lengths."""
    t, d = p.id_type, p.data
    ports = (p.port, p.port) if p.port else (0, 65535)
    n = {ID_IPV4_ADDR: 4, ID_IPV4_ADDR_SUBNET: 8, ID_IPV4_ADDR_RANGE: 8,
         ID_IPV6_ADDR: 16, ID_IPV6_ADDR_SUBNET: 32, ID_IPV6_ADDR_RANGE: 32}.get(t)  # fmt: skip
    if n is None:
        raise DecodeError(f"quick mode ID type {t} is not an address, subnet or range")
    if len(d) != n:
        raise DecodeError(f"quick mode ID type {t} carries {len(d)} bytes, expected {n}")
    fam: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if n in (4, 8) else ipaddress.IPv6Address
    )
    half = 4 if fam is ipaddress.IPv4Address else 16
    try:
        if t in (ID_IPV4_ADDR, ID_IPV6_ADDR):
            a = fam(d)
            return TrafficSelector(a, a, p.protocol, *ports)
        if t in (ID_IPV4_ADDR_SUBNET, ID_IPV6_ADDR_SUBNET):
            addr = int.from_bytes(d[:half], "big")
            mask = int.from_bytes(d[half:], "big")
            bits = half * 8
            inv = ((1 << bits) - 1) ^ mask
            if inv & (inv + 1):
                raise DecodeError(f"subnet mask {fam(mask)} is not contiguous")
            return TrafficSelector(fam(addr & mask), fam((addr & mask) | inv), p.protocol, *ports)
        return TrafficSelector(fam(d[:half]), fam(d[half:]), p.protocol, *ports)
    except ValueError as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"quick mode ID: {e}") from None


@dataclass(frozen=True)
class NatOaPayload:
    """Original address of the sender (transport mode behind NAT); type 21, or 131 from draft peers."""

    TYPE: ClassVar[int] = 21
    id_type: int
    address: bytes

    def body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, 0, 0) + self.address

    @classmethod
    def parse(cls, body: bytes) -> NatOaPayload:
        if len(body) < 4:
            raise DecodeError("NAT-OA payload shorter than 4 bytes")
        t = body[0]
        want = {ID_IPV4_ADDR: 4, ID_IPV6_ADDR: 16}.get(t)
        if want is None or len(body) - 4 != want:
            raise DecodeError(f"NAT-OA type {t} with {len(body) - 4} address bytes is invalid")
        return cls(t, bytes(body[4:]))


@dataclass(frozen=True)
class NatOaDraftPayload(NatOaPayload):
    TYPE: ClassVar[int] = 131


def nat_oa(ip: str, draft: bool) -> NatOaPayload:
    a = ipaddress.ip_address(ip)
    cls = NatOaDraftPayload if draft else NatOaPayload
    return cls(ID_IPV4_ADDR if a.version == 4 else ID_IPV6_ADDR, a.packed)
