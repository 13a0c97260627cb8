"""SA payload proposals <-> policy proposals, and the choice of one by our local policy order.

An IKE proposal is one IKEv2 proposal (one transform of each type); we send our policy's proposals
in its order, and as responder walk *our* list first, taking the first one any peer proposal allows
(RFC 7296 §2.7 leaves the choice to the responder).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ike.policy import EspProposal, IkeProposal
from ike.proto.transforms import DH, ENCR, INTEG, PRF, by_v2_id
from ike.proto.v2.payloads import sa as w
from ike.proto.v2.payloads.sa import Proposal, Transform


# Transforms of our own proposals come from the policy, the same in every negotiation: each is built
# once (the caches are keyed by the policy values, all immutable; the results are immutable tuples).
@functools.lru_cache(maxsize=256)
def _encr_transform(name: str, keylen: int) -> Transform:
    e = ENCR[name]
    assert e.v2_id is not None
    return Transform(w.ENCR, e.v2_id, keylen if e.keylen_attr else None)


@functools.lru_cache(maxsize=256)
def _integ_transform(name: str) -> Transform:
    return Transform(w.INTEG, INTEG[name].v2_id or 0)


@functools.lru_cache(maxsize=256)
def _ike_transforms(p: IkeProposal) -> tuple[Transform, ...]:
    t = [_encr_transform(p.encr, p.encr_keylen), Transform(w.PRF, PRF[p.prf].v2_id or 0)]
    if p.integ:
        t.append(_integ_transform(p.integ))
    t.append(Transform(w.DH, p.dh))
    return tuple(t)


@functools.lru_cache(maxsize=256)
def _esp_transforms(p: EspProposal, pfs_group: int, protocol: int) -> tuple[Transform, ...]:
    t: list[Transform] = []
    if protocol == w.PROTO_ESP:
        t.append(_encr_transform(p.encr, p.encr_keylen))
    if p.integ:
        t.append(_integ_transform(p.integ))
    if pfs_group:
        t.append(Transform(w.DH, pfs_group))
    t.append(Transform(w.ESN, 1 if p.esn else 0))
    return tuple(t)


def ike_to_wire(p: IkeProposal, number: int, spi: bytes = b"") -> Proposal:
    return Proposal(number, w.PROTO_IKE, spi, list(_ike_transforms(p)))


def esp_to_wire(p: EspProposal, number: int, spi: bytes, pfs_group: int, protocol: int = w.PROTO_ESP) -> Proposal:
    return Proposal(number, protocol, spi, list(_esp_transforms(p, pfs_group, protocol)))


def _has(prop: Proposal, want: Transform) -> bool:
    return want in prop.transforms


def _integ_ok(prop: Proposal, integ: str | None) -> bool:
    if integ is not None:
        return _integ_transform(integ) in prop.transforms
    integs = prop.of_type(w.INTEG)
    return not integs or any(t.id == 0 for t in integs)


def ike_matches(ours: IkeProposal, prop: Proposal, with_dh: bool = True) -> bool:
    if prop.protocol != w.PROTO_IKE:
        return False
    mine = _ike_transforms(ours)  # ENCR, PRF, [INTEG,] DH
    if not _has(prop, mine[0]):
        return False
    if not _has(prop, mine[1]):
        return False
    if not _integ_ok(prop, ours.integ):
        return False
    return not with_dh or _has(prop, mine[-1])


def choose_ike(ours: Sequence[IkeProposal], theirs: Sequence[Proposal]) -> tuple[IkeProposal, Proposal] | None:
    for mine in ours:
        for prop in theirs:
            if ike_matches(mine, prop):
                return mine, prop
    return None


def esp_matches(
    ours: EspProposal, pfs_group: int, prop: Proposal, protocol: int = w.PROTO_ESP, ignore_dh: bool = False
) -> bool:
    if prop.protocol != protocol:
        return False
    if protocol == w.PROTO_ESP and not _has(prop, _encr_transform(ours.encr, ours.encr_keylen)):
        return False
    if not _integ_ok(prop, ours.integ):
        return False
    if ignore_dh:
        pass
    elif pfs_group:
        if Transform(w.DH, pfs_group) not in prop.transforms:
            return False
    else:
        dhs = prop.of_type(w.DH)
        if dhs and not any(t.id == 0 for t in dhs):
            return False
    esns = prop.of_type(w.ESN)
    return Transform(w.ESN, 1 if ours.esn else 0) in esns if esns else not ours.esn


def choose_esp(
    ours: Sequence[EspProposal],
    pfs_group: int,
    theirs: Sequence[Proposal],
    protocol: int = w.PROTO_ESP,
    ignore_dh: bool = False,
) -> tuple[EspProposal, Proposal] | None:
    """`ignore_dh` for IKE_AUTH, where a DH transform means nothing (RFC 7296 §1.2) but some
    initiators still send their PFS group."""
    for mine in ours:
        for prop in theirs:
            if esp_matches(mine, pfs_group, prop, protocol, ignore_dh) and len(prop.spi) == 4:
                return mine, prop
    return None


def selected_ike(offered: Sequence[IkeProposal], reply: Sequence[Proposal]) -> IkeProposal | None:
    """The responder's single chosen proposal mapped back to one of ours (initiator side check)."""
    if len(reply) != 1:
        return None
    prop = reply[0]
    if any(len(prop.of_type(tt)) > 1 for tt in (w.ENCR, w.PRF, w.INTEG, w.DH)):
        return None
    for mine in offered:
        if ike_matches(mine, prop) and len(prop.transforms) == len(ike_to_wire(mine, 1).transforms):
            return mine
    return None


def selected_esp(
    offered: Sequence[EspProposal], pfs_group: int, reply: Sequence[Proposal], protocol: int = w.PROTO_ESP
) -> EspProposal | None:
    if len(reply) != 1 or len(reply[0].spi) != 4:
        return None
    prop = reply[0]
    if any(len(prop.of_type(tt)) > 1 for tt in (w.ENCR, w.INTEG, w.DH, w.ESN)):
        return None
    for mine in offered:
        if esp_matches(mine, pfs_group, prop, protocol):
            return mine
    return None


def _tname(t: Transform) -> str:
    if t.type == w.ENCR:
        n = by_v2_id(ENCR, t.id)
        base = n or f"ENCR#{t.id}"
        return f"{base}-{t.keylen}" if t.keylen and t.keylen > 0 else base
    if t.type == w.PRF:
        return "prf-" + (by_v2_id(PRF, t.id) or f"#{t.id}")
    if t.type == w.INTEG:
        return "none" if t.id == 0 else (by_v2_id(INTEG, t.id) or f"INTEG#{t.id}")
    if t.type == w.DH:
        return "nodh" if t.id == 0 else (f"dh{t.id}" if t.id in DH else f"DH#{t.id}")
    if t.type == w.ESN:
        return "esn" if t.id == 1 else "noesn"
    return f"T{t.type}#{t.id}"


def describe(props: Sequence[Proposal]) -> tuple[str, ...]:
    """Readable text of wire proposals, one line each, e.g. 'IKE aes-cbc-256/hmac-sha2-256-128/...'."""
    out = []
    for p in props:
        groups = []
        for tt in (w.ENCR, w.INTEG, w.PRF, w.DH, w.ESN):
            ts = p.of_type(tt)
            if ts:
                groups.append("|".join(_tname(t) for t in ts))
        out.append(f"{w.PROTO_NAMES.get(p.protocol, p.protocol)} " + "/".join(groups))
    return tuple(out)


def describe_ike(props: Sequence[IkeProposal]) -> tuple[str, ...]:
    return tuple(f"IKE {p}" for p in props)


def describe_esp(props: Sequence[EspProposal], pfs_group: int) -> tuple[str, ...]:
    return tuple(f"ESP {p}" + (f"/dh{pfs_group}" if pfs_group else "") for p in props)
