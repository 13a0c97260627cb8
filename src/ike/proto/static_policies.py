"""`StaticPolicies`: a `PolicySource` (ike.proto.api) over tunnel definitions held in memory.

For everything that drives the engines without the daemon's database: the in-memory engine tests,
the interop drivers, load generators. It is a real index, not a stub: the lookups cost the same
however many definitions it holds, so a benchmark measures the engine, not the lookup.

    policies = StaticPolicies([p1], [p2a, p2b])
    policies.add(p2c)            # a definition added later
    policies.replace(p1, p1b)    # one edited in place

Lookup rules (ike.daemon.policies.IndexedPolicies, the daemon's index over the database, answers
the same but also ranks identities by address fit and phase 2 candidates by narrowness):
- phase1_by_address: exact address pair first, then wildcard local, wildcard remote, both
  wildcards ('0.0.0.0', '::' or ''); within one of those, in definition order.
- phase1_by_identity: the first of those whose remote identity matches (identities_match).
- phase2_for: under that phase 1, the definition equal to the first proposed selectors, else the
  first in definition order that overlaps the proposal (the engine narrows).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from ike.policy import Identity, Phase1Tunnel, Phase2Tunnel, TrafficSelector
from ike.proto.identity import identities_match

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (address wildcards in definitions)


@functools.lru_cache(maxsize=4096)
def _norm(addr: str) -> str:
    """Canonical address text ('' for a wildcard): IPv6 has many spellings of one address."""
    if addr in _WILDCARDS:
        return ""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


class StaticPolicies:
    """A `PolicySource` indexed by address pair and by phase 1 number (see the module docstring)."""

    def __init__(self, phase1s: Iterable[Phase1Tunnel] = (), phase2s: Iterable[Phase2Tunnel] = ()) -> None:
        self._p1: list[Phase1Tunnel] = []
        self._p2: list[Phase2Tunnel] = []
        self._by_addr: dict[tuple[str, str], list[Phase1Tunnel]] = {}
        self._p2_under: dict[int, list[Phase2Tunnel]] = {}
        self._p2_exact: dict[tuple[int, TrafficSelector, TrafficSelector], Phase2Tunnel] = {}
        self.add(*phase1s, *phase2s)

    @property
    def phase1s(self) -> tuple[Phase1Tunnel, ...]:
        return tuple(self._p1)

    @property
    def phase2s(self) -> tuple[Phase2Tunnel, ...]:
        return tuple(self._p2)

    def add(self, *definitions: Phase1Tunnel | Phase2Tunnel) -> None:
        """Add definitions after those already there."""
        for d in definitions:
            if isinstance(d, Phase1Tunnel):
                self._p1.append(d)
            else:
                self._p2.append(d)
        self._reindex()

    def replace(self, old: Phase1Tunnel | Phase2Tunnel, new: Phase1Tunnel | Phase2Tunnel) -> None:
        """Put `new` where `old` stands (a definition edited while engines run)."""
        if isinstance(old, Phase1Tunnel) and isinstance(new, Phase1Tunnel):
            self._p1[self._p1.index(old)] = new
        elif isinstance(old, Phase2Tunnel) and isinstance(new, Phase2Tunnel):
            self._p2[self._p2.index(old)] = new
        else:
            raise TypeError("replace() takes two phase 1 or two phase 2 definitions")
        self._reindex()

    def _reindex(self) -> None:
        # Rebuilt whole on a change (changes are rare, lookups are per negotiation).
        self._by_addr.clear()
        self._p2_under.clear()
        self._p2_exact.clear()
        for p1 in self._p1:
            self._by_addr.setdefault((_norm(p1.local_addr), _norm(p1.remote_addr)), []).append(p1)
        for p2 in self._p2:
            self._p2_under.setdefault(p2.phase1, []).append(p2)
            self._p2_exact.setdefault((p2.phase1, p2.local_ts, p2.remote_ts), p2)

    # --- PolicySource ---------------------------------------------------------------------------

    def phase1_by_address(self, local_ip: str, remote_ip: str) -> Sequence[Phase1Tunnel]:
        local, remote = _norm(local_ip), _norm(remote_ip)
        out: list[Phase1Tunnel] = []
        for key in dict.fromkeys(((local, remote), (local, ""), ("", remote), ("", ""))):
            out.extend(self._by_addr.get(key, ()))
        return out

    def phase1_by_identity(self, local_ip: str, remote_ip: str, remote_id: Identity) -> Phase1Tunnel | None:
        for p1 in self.phase1_by_address(local_ip, remote_ip):
            if identities_match(p1.remote_id, remote_id):
                return p1
        return None

    def phase2_definitions(self, phase1: Phase1Tunnel) -> Sequence[Phase2Tunnel]:
        return tuple(self._p2_under.get(phase1.number, ()))

    def phase2_for(
        self, phase1: Phase1Tunnel, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]
    ) -> Phase2Tunnel | None:
        if local_ts and remote_ts:
            exact = self._p2_exact.get((phase1.number, local_ts[0], remote_ts[0]))
            if exact is not None:
                return exact
        for p2 in self._p2_under.get(phase1.number, ()):
            if any(p2.local_ts.intersect(t) for t in local_ts) and any(p2.remote_ts.intersect(t) for t in remote_ts):
                return p2
        return None
