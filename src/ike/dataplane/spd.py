"""Selector lookups for the userspace data plane, built once per SA, never a scan over all tunnels.

`Spd` answers "which outbound SA carries this packet?": remote selectors are cut into CIDR blocks and
kept in one dict per prefix length (longest prefix first, so the cost is the number of distinct prefix
lengths in use, usually one or two). `SelectorSet` answers "may this decrypted packet arrive on this
SA?" by checking against that SA's own few selectors. Both cache address-pair answers when no
selector involved restricts protocol or ports (then the addresses decide alone).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ike.policy import TrafficSelector

T = TypeVar("T")

_PORT_PROTOS = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite: ports at L4 offset 0/2
_ICMP_PROTOS = frozenset((1, 58))  # type/code stand in for ports (RFC 4301 §4.4.1.1)
_V6_EXT = frozenset((0, 43, 60, 51))  # hop-by-hop, routing, destination options, AH
_CACHE_MAX = 65536


def flow_of(pkt: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, int] | None:
    """(version, src, dst, proto, sport, dport) of an IP packet; ports 0 where there are none."""
    if len(pkt) < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        src = int.from_bytes(pkt[12:16], "big")
        dst = int.from_bytes(pkt[16:20], "big")
        proto = pkt[9]
        off = (pkt[0] & 0x0F) * 4
        if int.from_bytes(pkt[6:8], "big") & 0x1FFF:  # non-first fragment: no L4 header
            return v, src, dst, proto, 0, 0
    elif v == 6 and len(pkt) >= 40:
        src = int.from_bytes(pkt[8:24], "big")
        dst = int.from_bytes(pkt[24:40], "big")
        proto, off = pkt[6], 40
        while proto in _V6_EXT and len(pkt) >= off + 2:
            proto, off = pkt[off], off + ((pkt[off + 1] + 2) * 4 if proto == 51 else (pkt[off + 1] + 1) * 8)
        if proto == 44 and len(pkt) >= off + 8:  # fragment header
            first = int.from_bytes(pkt[off + 2 : off + 4], "big") >> 3 == 0
            proto, off = pkt[off], off + 8
            if not first:
                return v, src, dst, proto, 0, 0
    else:
        return None
    if proto in _PORT_PROTOS and len(pkt) >= off + 4:
        return (
            v,
            src,
            dst,
            proto,
            int.from_bytes(pkt[off : off + 2], "big"),
            int.from_bytes(pkt[off + 2 : off + 4], "big"),
        )
    if proto in _ICMP_PROTOS and len(pkt) >= off + 2:
        return v, src, dst, proto, pkt[off], pkt[off + 1]
    return v, src, dst, proto, 0, 0


@dataclass(frozen=True)
class _Sel:
    lo: int
    hi: int
    proto: int
    plo: int
    phi: int
    version: int

    @classmethod
    def of(cls, ts: TrafficSelector) -> _Sel:
        return cls(int(ts.start), int(ts.end), ts.protocol, ts.port_start, ts.port_end, ts.version)

    @property
    def addr_only(self) -> bool:
        return self.proto == 0 and self.plo == 0 and self.phi == 65535

    def match_rest(self, proto: int, port: int) -> bool:
        if self.proto and self.proto != proto:
            return False
        return self.plo <= port <= self.phi


def _ports_match(sel: _Sel, proto: int, port: int) -> bool:
    if sel.addr_only:
        return True
    if sel.proto and sel.proto != proto:
        return False
    if sel.plo == 0 and sel.phi == 65535:
        return True
    # ICMP selectors carry type in the high byte of the port (RFC 7296 §3.13.1); our `port` is the type.
    if proto in _ICMP_PROTOS:
        return sel.plo >> 8 <= port <= sel.phi >> 8
    return sel.plo <= port <= sel.phi


class SelectorSet:
    """Inbound check: a decrypted packet must come from the remote selectors and go to the local ones."""

    def __init__(self, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        self.local = tuple(_Sel.of(t) for t in local_ts)
        self.remote = tuple(_Sel.of(t) for t in remote_ts)
        self.addr_only = all(s.addr_only for s in self.local + self.remote)
        self._ok: set[bytes] = set()

    def allows(self, pkt: bytes | bytearray | memoryview) -> bool:
        if self.addr_only:
            key = bytes(pkt[12:20]) if pkt[0] >> 4 == 4 else bytes(pkt[8:40])
            if key in self._ok:
                return True
        f = flow_of(pkt)
        if f is None:
            return False
        v, src, dst, proto, sport, dport = f
        ok = any(s.version == v and s.lo <= src <= s.hi and _ports_match(s, proto, sport) for s in self.remote) and any(
            s.version == v and s.lo <= dst <= s.hi and _ports_match(s, proto, dport) for s in self.local
        )
        if ok and self.addr_only:
            if len(self._ok) >= _CACHE_MAX:
                self._ok.clear()
            self._ok.add(key)
        return ok


def cidr_blocks(ts: TrafficSelector) -> list[tuple[int, int]]:
    """The selector's address range as (network int, prefix length) blocks."""
    return [(int(n.network_address), n.prefixlen) for n in ipaddress.summarize_address_range(ts.start, ts.end)]


@dataclass
class _Entry(Generic[T]):
    key: int
    local: tuple[_Sel, ...]
    remote: _Sel
    value: T
    order: int


class Spd(Generic[T]):
    """Outbound policy lookup: packet -> value of the newest entry whose selectors match it."""

    def __init__(self) -> None:
        # per IP version: prefix length -> network -> entries (newest first)
        self._tables: dict[int, dict[int, dict[int, list[_Entry[T]]]]] = {4: {}, 6: {}}
        self._plens: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # (prefix length, mask), longest first
        self._by_key: dict[int, list[tuple[int, int, int, _Entry[T]]]] = {}
        self._restricted = 0  # entries with protocol/port limits (then no address-pair cache)
        self._cache: dict[bytes, T | None] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def add(
        self, key: int, local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector], value: T
    ) -> None:
        if key in self._by_key:
            self.remove(key)
        local = tuple(_Sel.of(t) for t in local_ts)
        placed: list[tuple[int, int, int, _Entry[T]]] = []
        self._order += 1
        for ts in remote_ts:
            r = _Sel.of(ts)
            e = _Entry(key, tuple(s for s in local if s.version == r.version), r, value, self._order)
            if not e.local:
                continue
            if not (r.addr_only and all(s.addr_only for s in e.local)):
                self._restricted += 1
            table = self._tables[r.version]
            for net, plen in cidr_blocks(ts):
                bucket = table.setdefault(plen, {}).setdefault(net, [])
                bucket.insert(0, e)
                placed.append((r.version, plen, net, e))
        self._by_key[key] = placed
        self._reindex()

    def remove(self, key: int) -> None:
        placed = self._by_key.pop(key, None)
        if not placed:
            return
        seen: set[int] = set()
        for v, plen, net, e in placed:
            table = self._tables[v]
            bucket = table[plen][net]
            bucket.remove(e)
            if not bucket:
                del table[plen][net]
                if not table[plen]:
                    del table[plen]
            if id(e) not in seen:
                seen.add(id(e))
                if not (e.remote.addr_only and all(s.addr_only for s in e.local)):
                    self._restricted -= 1
        self._reindex()

    def _reindex(self) -> None:
        for v, bits in ((4, 32), (6, 128)):
            full = (1 << bits) - 1
            self._plens[v] = [(p, full ^ ((1 << (bits - p)) - 1)) for p in sorted(self._tables[v], reverse=True)]
        self._cache.clear()

    def lookup(self, pkt: bytes | bytearray | memoryview) -> T | None:
        v = pkt[0] >> 4
        if not self._restricted:
            key = bytes(pkt[12:20]) if v == 4 else bytes(pkt[8:40])
            try:
                return self._cache[key]
            except KeyError:
                pass
            f = flow_of(pkt)
            hit = self._find(f) if f is not None else None
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
            return hit
        f = flow_of(pkt)
        return self._find(f) if f is not None else None

    def _find(self, f: tuple[int, int, int, int, int, int]) -> T | None:
        v, src, dst, proto, sport, dport = f
        table = self._tables.get(v)
        if not table:
            return None
        for plen, mask in self._plens[v]:
            bucket = table[plen].get(dst & mask)
            if bucket is None:
                continue
            for e in bucket:
                r = e.remote
                if (r.addr_only or _ports_match(r, proto, dport)) and any(
                    s.lo <= src <= s.hi and _ports_match(s, proto, sport) for s in e.local
                ):
                    return e.value
        return None
