"""The daemon's in-memory view of the tunnel-definition database.

Built once from the store (and again on `reload`), indexed by everything a peer's packet or an
`ike cmd=activate` can name, so no lookup scans all definitions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ike.policy import Group, Identity, IdType, Phase1Tunnel, Phase2Tunnel, PolicyError, TrafficSelector

_ANY = {"0.0.0.0", "::", "", "*", "any"}  # noqa: S104 (wildcards in definitions, not binds)


_NORM_CACHE: dict[str, str] = {}
_NORM_CACHE_MAX = 4096


def _norm(addr: str) -> str:
    """Canonical text of an address; wildcards become ''."""
    # Every new negotiation looks its addresses up here; parsing them with ipaddress each time was
    # about 5 % of a busy responder. Bounded, since a peer chooses the source address.
    hit = _NORM_CACHE.get(addr)
    if hit is not None:
        return hit
    out = _norm_uncached(addr)
    if len(_NORM_CACHE) >= _NORM_CACHE_MAX:
        _NORM_CACHE.clear()
    _NORM_CACHE[addr] = out
    return out


def _norm_uncached(addr: str) -> str:
    a = addr.strip()
    if a.lower() in _ANY:
        return ""
    try:
        return str(ipaddress.ip_address(a))
    except ValueError:
        return a


def _id_key(ident: Identity) -> tuple[int, str]:
    v = ident.value.strip()
    if ident.type in (IdType.IPV4, IdType.IPV6):
        v = _norm(v)
    elif ident.type in (IdType.FQDN, IdType.USER_FQDN):
        v = v.lower()
    elif ident.type is IdType.DN:
        v = ",".join(p.strip() for p in v.split(","))
    return (ident.type.value, v)


def _size(ts: TrafficSelector) -> int:
    ports = ts.port_end - ts.port_start + 1
    return (int(ts.end) - int(ts.start) + 1) * ports * (256 if ts.protocol == 0 else 1)


def _ts_key(ts: TrafficSelector) -> tuple[int, int, int]:
    return (ts.version, int(ts.start), int(ts.end))


@dataclass
class ActivationTarget:
    """One phase 1 definition and the phase 2 definitions to start under it."""

    phase1: Phase1Tunnel
    phase2: list[Phase2Tunnel] = field(default_factory=list)
    # ipaddr= with a definition whose remote address is a wildcard: the peer it is started toward
    # (phase1 then carries that address). Another peer's tunnel under the same definition is not it.
    toward: str | None = None


class LookupError_(ValueError):
    """A name, number or identity that matches no definition; the message says what to check."""


class IndexedPolicies:
    """A `PolicySource` (see ike.proto.api) plus the lookups `ike cmd=activate` needs."""

    def __init__(
        self,
        phase1: Iterable[Phase1Tunnel] = (),
        phase2: Iterable[Phase2Tunnel] = (),
        groups: Iterable[Group] = (),
    ) -> None:
        self.p1_by_number: dict[int, Phase1Tunnel] = {}
        self.p1_by_name: dict[str, Phase1Tunnel] = {}
        self.p2_by_number: dict[int, Phase2Tunnel] = {}
        self.p2_by_name: dict[str, Phase2Tunnel] = {}
        self.p2_under: dict[int, list[Phase2Tunnel]] = {}
        self.groups: dict[str, Group] = {}
        self._by_addr: dict[tuple[str, str], list[Phase1Tunnel]] = {}
        self._by_remote_id: dict[tuple[int, str], list[Phase1Tunnel]] = {}
        self._p2_by_remote_ts: dict[tuple[int, int, int], list[Phase2Tunnel]] = {}
        self._p2_exact: dict[tuple[int, TrafficSelector, TrafficSelector], Phase2Tunnel] = {}
        for p1 in sorted(phase1, key=lambda t: t.number):
            self.p1_by_number[p1.number] = p1
            self.p1_by_name[p1.name] = p1
            self._by_addr.setdefault((_norm(p1.local_addr), _norm(p1.remote_addr)), []).append(p1)
            self._by_remote_id.setdefault(_id_key(p1.remote_id), []).append(p1)
        for p2 in sorted(phase2, key=lambda t: t.number):
            self.p2_by_number[p2.number] = p2
            self.p2_by_name[p2.name] = p2
            self.p2_under.setdefault(p2.phase1, []).append(p2)
            self._p2_by_remote_ts.setdefault(_ts_key(p2.remote_ts), []).append(p2)
            self._p2_exact.setdefault((p2.phase1, p2.local_ts, p2.remote_ts), p2)
        for g in groups:
            self.groups[g.name] = g

    # --- PolicySource ---------------------------------------------------------------------------

    def phase1_by_address(self, local_ip: str, remote_ip: str) -> Sequence[Phase1Tunnel]:
        local, remote = _norm(local_ip), _norm(remote_ip)
        out: list[Phase1Tunnel] = []
        for key in ((local, remote), (local, ""), ("", remote), ("", "")):
            out.extend(self._by_addr.get(key, ()))
        return out

    def phase1_by_identity(self, local_ip: str, remote_ip: str, remote_id: Identity) -> Phase1Tunnel | None:
        local, remote = _norm(local_ip), _norm(remote_ip)
        best: Phase1Tunnel | None = None
        best_score = -1
        for p1 in self._by_remote_id.get(_id_key(remote_id), ()):
            pl, pr = _norm(p1.local_addr), _norm(p1.remote_addr)
            if pl not in ("", local) or pr not in ("", remote):
                continue
            score = (pl == local) + 2 * (pr == remote)
            if score > best_score:
                best, best_score = p1, score
        return best

    def phase2_definitions(self, phase1: Phase1Tunnel) -> Sequence[Phase2Tunnel]:
        return tuple(self.p2_under.get(phase1.number, ()))

    def phase2_for(
        self, phase1: Phase1Tunnel, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]
    ) -> Phase2Tunnel | None:
        """The definition that fits the proposal best: one equal to it, else the narrowest one that
        contains it, else one that overlaps it (the engine narrows). A subnet tunnel must not
        capture a proposal meant for a host tunnel beside it, or the peer's second SA would be
        taken for a rekey of the first."""
        if local_ts and remote_ts:
            exact = self._p2_exact.get((phase1.number, local_ts[0], remote_ts[0]))
            if exact is not None:
                return exact  # the common case, one dict lookup however many tunnels there are
        best: Phase2Tunnel | None = None
        best_key: tuple[int, int] | None = None
        for p2 in self.p2_under.get(phase1.number, ()):
            if not (
                any(p2.local_ts.intersect(t) for t in local_ts) and any(p2.remote_ts.intersect(t) for t in remote_ts)
            ):
                continue
            if local_ts and remote_ts and p2.local_ts == local_ts[0] and p2.remote_ts == remote_ts[0]:
                rank = 0
            elif all(p2.local_ts.contains(t) for t in local_ts) and all(p2.remote_ts.contains(t) for t in remote_ts):
                rank = 1
            else:
                rank = 2
            key = (rank, _size(p2.local_ts) + _size(p2.remote_ts))
            if best_key is None or key < best_key:
                best, best_key = p2, key
        return best

    # --- what `ike cmd=activate` names ----------------------------------------------------------

    def autostart(self) -> list[ActivationTarget]:
        """Every autostart definition: a phase 2 marked autostart brings its phase 1 with it."""
        targets: dict[int, ActivationTarget] = {}
        for p1 in self.p1_by_number.values():
            if p1.autostart:
                targets[p1.number] = ActivationTarget(p1)
        for p2 in self.p2_by_number.values():
            owner = self.p1_by_number.get(p2.phase1) if p2.autostart else None
            if owner is not None:
                targets.setdefault(owner.number, ActivationTarget(owner)).phase2.append(p2)
        return list(targets.values())

    def by_numbers(self, numbers: Iterable[int], phase: int | None) -> list[ActivationTarget]:
        """Database tunnel numbers: phase 1 numbers for phase=1, phase 2 numbers otherwise (both
        phases for a phase 2 number; its phase 1 is started first). Without phase=, a number that
        names no phase 2 tunnel but a phase 1 tunnel starts that one with its phase 2 tunnels."""
        if phase == 1:
            return [ActivationTarget(self._p1(n)) for n in numbers]
        out: dict[int, ActivationTarget] = {}
        for n in numbers:
            p2 = self.p2_by_number.get(n)
            if p2 is None and phase is None and n in self.p1_by_number:
                # Without phase=, a number that is only a phase 1 tunnel means it and its phase 2s.
                p1 = self.p1_by_number[n]
                t = out.setdefault(p1.number, ActivationTarget(p1))
                t.phase2.extend(c for c in self.p2_under.get(n, []) if c not in t.phase2)
                continue
            if p2 is None:
                raise LookupError_(f"no phase 2 tunnel number {n} in the database (see ike cmd=list db phase=2)")
            p1 = self._p1(p2.phase1)
            t = out.setdefault(p1.number, ActivationTarget(p1))
            if p2 not in t.phase2:
                t.phase2.append(p2)
        return list(out.values())

    def by_names(self, names: Iterable[str], phase: int) -> list[ActivationTarget]:
        out: dict[int, ActivationTarget] = {}
        for name in names:
            if phase == 1:
                p1 = self.p1_by_name.get(name)
                if p1 is None:
                    raise LookupError_(f"no phase 1 tunnel named {name!r} in the database")
                out.setdefault(p1.number, ActivationTarget(p1))
            else:
                p2 = self.p2_by_name.get(name)
                if p2 is None:
                    raise LookupError_(f"no phase 2 tunnel named {name!r} in the database")
                p1 = self._p1(p2.phase1)
                out.setdefault(p1.number, ActivationTarget(p1)).phase2.append(p2)
        return list(out.values())

    def by_addresses(self, src: str, dst: str, phase: int | None) -> list[ActivationTarget]:
        """`ipaddr=src,dst`: the tunnel "set up using those IP addresses" with the policy the
        database holds for them. The definitions are looked up as a peer's packet would find them
        (exact pair, then no remote address, then no local address, then neither); a wildcard end
        is started from/toward the address given. With phase=2, a phase 2 definition whose
        selectors are exactly those two hosts is preferred to all of a phase 1's phase 2s."""
        try:
            local, remote = str(ipaddress.ip_address(src.strip())), str(ipaddress.ip_address(dst.strip()))
        except ValueError:
            raise LookupError_(f"ipaddr={src},{dst}: both must be IP addresses (src_addr,dst_addr)") from None
        cands = self.phase1_by_address(local, remote)
        if not cands:
            raise LookupError_(f"no tunnel in the database between {src} and {dst}; define one, or check the addresses")

        def target(p1: Phase1Tunnel, p2s: Iterable[Phase2Tunnel] = ()) -> ActivationTarget:
            wild_local, wild_remote = _norm(p1.local_addr) == "", _norm(p1.remote_addr) == ""
            if wild_local or wild_remote:
                p1 = dataclasses.replace(
                    p1,
                    local_addr=local if wild_local else p1.local_addr,
                    remote_addr=remote if wild_remote else p1.remote_addr,
                )
            return ActivationTarget(p1, list(p2s), toward=remote if wild_remote else None)

        if phase == 1:
            return [target(cands[0])]
        if phase == 2:
            a, b = ipaddress.ip_address(local), ipaddress.ip_address(remote)
            for p1 in cands:
                hosts = [
                    p2
                    for p2 in self.p2_under.get(p1.number, ())
                    if p2.local_ts.start == p2.local_ts.end == a and p2.remote_ts.start == p2.remote_ts.end == b
                ]
                if hosts:
                    return [target(p1, hosts)]
        for p1 in cands:
            p2s = self.p2_under.get(p1.number, [])
            if p2s:
                return [target(p1, p2s)]
        raise LookupError_(f"the tunnel between {src} and {dst} has no phase 2 definition")

    def by_remote_id(self, remid: str, phase: int | None) -> list[ActivationTarget]:
        """A group name (one tunnel per member), a phase 1 ID, or a phase 2 ID."""
        return self._resolve_remid(remid, phase, ())

    def _resolve_remid(self, remid: str, phase: int | None, path: tuple[str, ...]) -> list[ActivationTarget]:
        group = self.groups.get(remid)
        if group is not None:
            if remid in path:
                # A member naming the group itself, or a group further up: it would never end.
                cycle = " -> ".join((*path[path.index(remid) :], remid))
                raise LookupError_(
                    f"group {remid!r} contains itself ({cycle}); remove that member from the group "
                    "in the database (ikedb put), then activate again"
                )
            out: list[ActivationTarget] = []
            for member in group.members:
                out.extend(self._resolve_remid(member, phase, (*path, remid)))
            if not out:
                raise LookupError_(f"group {remid!r} has no members")
            return out
        p1s: list[Phase1Tunnel] = []
        try:
            ident = Identity.parse(remid)
            p1s = self._by_remote_id.get(_id_key(ident), [])
        except PolicyError:
            pass
        p2s: list[Phase2Tunnel] = []
        try:
            ts = TrafficSelector.parse(remid)
            p2s = self._p2_by_remote_ts.get(_ts_key(ts), [])
        except PolicyError:
            pass
        if phase == 2 and p2s:
            return self._group_p2(p2s)
        if p1s:
            p1 = p1s[0]
            return [ActivationTarget(p1, [] if phase == 1 else list(self.p2_under.get(p1.number, [])))]
        if p2s:
            targets = self._group_p2(p2s)
            if phase == 1:
                return [ActivationTarget(t.phase1) for t in targets]
            return targets
        raise LookupError_(
            f"remote ID {remid!r} matches no phase 1 ID, phase 2 ID or group in the database "
            "(see ike cmd=list db verbose)"
        )

    def _group_p2(self, p2s: Iterable[Phase2Tunnel]) -> list[ActivationTarget]:
        out: dict[int, ActivationTarget] = {}
        for p2 in p2s:
            p1 = self._p1(p2.phase1)
            out.setdefault(p1.number, ActivationTarget(p1)).phase2.append(p2)
        return list(out.values())

    def _p1(self, n: int) -> Phase1Tunnel:
        p1 = self.p1_by_number.get(n)
        if p1 is None:
            raise LookupError_(f"no phase 1 tunnel number {n} in the database (see ike cmd=list db phase=1)")
        return p1


def load_from_store(db: Path) -> IndexedPolicies:
    """Read every definition from the database at `db`."""
    from ike.db.store import Store

    with Store(db) as store, store.snapshot():
        return IndexedPolicies(store.phase1_tunnels(), store.phase2_tunnels(), store.groups())
