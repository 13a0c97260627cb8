"""Between the policy model (IkeProposal / EspProposal) and IKEv1 SA payloads, in both directions,
and proposal choice in local policy order (the responder walks its own list and takes the first
entry any peer transform matches). Wire numbers come from the shared `transforms` table.

Phase 1 attributes: RFC 2409 appendix A; phase 2 attributes: RFC 2407 §4.5, RFC 3947 §5.1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ike.policy import AuthMethod, EspProposal, IkeProposal
from ike.proto.transforms import DH, ENCR, INTEG, INTEG_FOR_PRF, PRF
from ike.proto.v1.payloads.attributes import Attr
from ike.proto.v1.payloads.errors import DecodeError
from ike.proto.v1.payloads.sa import KEY_IKE, PROTO_AH, PROTO_ESP, PROTO_ISAKMP, Proposal, SaPayload, Transform

# Phase 1 attribute types
P1_ENCR, P1_HASH, P1_AUTH, P1_GROUP, P1_LIFE_TYPE, P1_LIFE_DURATION, P1_KEYLEN = 1, 2, 3, 4, 11, 12, 14
# Phase 2 attribute types
P2_LIFE_TYPE, P2_LIFE_DURATION, P2_GROUP, P2_ENCAP, P2_AUTH, P2_KEYLEN, P2_ESN = 1, 2, 3, 4, 5, 6, 11
LIFE_SECONDS, LIFE_KB = 1, 2

AUTH_PSK = 1
AUTH_RSA_SIG = 3
AUTH_ECDSA = {9: "sha256", 10: "sha384", 11: "sha512"}  # RFC 4754: P-256, P-384, P-521

ENCAP_TUNNEL, ENCAP_TRANSPORT = 1, 2
ENCAP_UDP_TUNNEL, ENCAP_UDP_TRANSPORT = 3, 4
ENCAP_UDP_TUNNEL_DRAFT, ENCAP_UDP_TRANSPORT_DRAFT = 61443, 61444
ENCAP_MODES = {
    ENCAP_TUNNEL: ("tunnel", False),
    ENCAP_TRANSPORT: ("transport", False),
    ENCAP_UDP_TUNNEL: ("tunnel", True),
    ENCAP_UDP_TRANSPORT: ("transport", True),
    ENCAP_UDP_TUNNEL_DRAFT: ("tunnel", True),
    ENCAP_UDP_TRANSPORT_DRAFT: ("transport", True),
}

# AH transform IDs (RFC 2407 §4.4.3, RFC 4868) by integrity name
_AH_IDS = {"hmac-md5-96": 2, "hmac-sha1-96": 3, "hmac-sha2-256-128": 5, "hmac-sha2-384-192": 6, "hmac-sha2-512-256": 7}


def _by_wire(pairs: list[tuple[str, int | None]]) -> dict[int, str]:
    """Wire number -> name, the first name in table order winning (as a scan of the table finds)."""
    out: dict[int, str] = {}
    for name, wire in pairs:
        if wire is not None:
            out.setdefault(wire, name)
    return out


# The transform tables read backwards, built once rather than scanned for every peer transform.
_ENCR_BY_IKE_ID = _by_wire([(n, e.v1_ike_id) for n, e in ENCR.items()])
_ENCR_BY_ESP_ID = _by_wire([(n, e.v1_esp_id) for n, e in ENCR.items()])
_PRF_BY_HASH_ID = _by_wire([(n, f.v1_hash_id) for n, f in PRF.items()])
_INTEG_BY_AUTH_ID = _by_wire([(n, i.v1_auth_id) for n, i in INTEG.items()])
_AH_BY_ID = _by_wire(list(_AH_IDS.items()))
_P1_KNOWN = frozenset({P1_ENCR, P1_HASH, P1_AUTH, P1_GROUP, P1_KEYLEN})
_P2_KNOWN = frozenset({P2_GROUP, P2_ENCAP, P2_AUTH, P2_KEYLEN, P2_ESN})


class Unsupported(ValueError):
    """A transform that names something we do not implement (not an error: try the next one)."""


def auth_from_value(v: int) -> AuthMethod | None:
    if v == AUTH_PSK:
        return AuthMethod.PSK
    if v == AUTH_RSA_SIG:
        return AuthMethod.RSA
    if v in AUTH_ECDSA:
        return AuthMethod.ECDSA
    return None


# --- phase 1 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase1Choice:
    proposal: IkeProposal
    auth: int  # wire authentication method
    lifetime_s: int
    lifetime_kb: int
    transform: Transform  # as the initiator sent it (echoed by the responder)


def phase1_transform(num: int, p: IkeProposal, auth: int, life_s: int, life_kb: int) -> Transform:
    e = ENCR[p.encr]
    if e.v1_ike_id is None:
        raise ValueError(f"{p.encr} is not defined for IKEv1 phase 1")
    attrs = [Attr(P1_ENCR, e.v1_ike_id)]
    if e.keylen_attr:
        attrs.append(Attr(P1_KEYLEN, p.encr_keylen))
    hash_id = PRF[p.prf].v1_hash_id
    if hash_id is None:
        raise ValueError(f"{p.prf} is not defined for IKEv1")
    attrs += [Attr(P1_HASH, hash_id), Attr(P1_AUTH, auth), Attr(P1_GROUP, p.dh)]
    attrs += [Attr(P1_LIFE_TYPE, LIFE_SECONDS), Attr(P1_LIFE_DURATION, life_s)]
    if life_kb:
        attrs += [Attr(P1_LIFE_TYPE, LIFE_KB), Attr(P1_LIFE_DURATION, life_kb)]
    return Transform(num, KEY_IKE, tuple(attrs))


def phase1_sa(proposals: tuple[IkeProposal, ...], auth: int, life_s: int, life_kb: int) -> SaPayload:
    ts = tuple(phase1_transform(i + 1, p, auth, life_s, life_kb) for i, p in enumerate(proposals))
    return SaPayload((Proposal(1, PROTO_ISAKMP, b"", ts),))


def _lifetimes(t: Transform, type_attr: int, dur_attr: int) -> tuple[int, int]:
    """Life type/duration pairs in order; 0 = not given."""
    secs = kb = 0
    pending: int | None = None
    for a in t.attrs:
        if a.type == type_attr:
            pending = a.as_int()
        elif a.type == dur_attr:
            if pending == LIFE_SECONDS:
                secs = a.as_int()
            elif pending == LIFE_KB:
                kb = a.as_int()
            else:
                raise DecodeError("life duration without a life type before it")
            pending = None
    return secs, kb


def decode_phase1_transform(t: Transform) -> tuple[IkeProposal, int, int, int]:
    """(proposal, auth method, life seconds, life kilobytes); Unsupported for what we do not know."""
    if t.transform_id != KEY_IKE:
        raise Unsupported(f"transform ID {t.transform_id} is not KEY_IKE")
    vals: dict[int, int] = {}
    for a in t.attrs:
        at = a.type
        if at in (P1_LIFE_TYPE, P1_LIFE_DURATION):
            continue
        if at not in _P1_KNOWN:
            raise Unsupported(f"phase 1 attribute {at} is not supported")
        v = a.value
        vals[at] = v if type(v) is int else a.as_int()
    for need, name in ((P1_ENCR, "encryption"), (P1_HASH, "hash"), (P1_AUTH, "auth method"), (P1_GROUP, "group")):
        if need not in vals:
            raise Unsupported(f"no {name} attribute")
    encr = _ENCR_BY_IKE_ID.get(vals[P1_ENCR])
    prf = _PRF_BY_HASH_ID.get(vals[P1_HASH])
    if encr is None:
        raise Unsupported(f"phase 1 encryption algorithm {vals[P1_ENCR]}")
    if prf is None:
        raise Unsupported(f"phase 1 hash algorithm {vals[P1_HASH]}")
    if vals[P1_GROUP] not in DH:
        raise Unsupported(f"DH group {vals[P1_GROUP]}")
    e = ENCR[encr]
    keylen = vals.get(P1_KEYLEN, e.key_lengths[0] if not e.keylen_attr else 0)
    if keylen not in e.key_lengths:
        raise Unsupported(f"{encr} key length {keylen}")
    secs, kb = _lifetimes(t, P1_LIFE_TYPE, P1_LIFE_DURATION)
    return IkeProposal(encr, keylen, INTEG_FOR_PRF[prf], prf, vals[P1_GROUP]), vals[P1_AUTH], secs, kb


def describe_phase1(t: Transform) -> str:
    try:
        p, auth, secs, kb = decode_phase1_transform(t)
    except (Unsupported, DecodeError) as e:
        return f"transform {t.number}: unsupported ({e})"
    am = auth_from_value(auth)
    life = f" life {secs}s" if secs else ""
    life += f" {kb}KB" if kb else ""
    return f"{p} auth {am.value if am else auth}{life}"


def select_phase1(
    ours: tuple[IkeProposal, ...], our_auth: AuthMethod, sa: SaPayload
) -> tuple[Phase1Choice | None, list[str]]:
    """Our first proposal (local policy order) that one of the peer's transforms matches, and the
    peer's offer as text lines for a failure message."""
    return choose_phase1(ours, our_auth, peer_phase1(sa)), phase1_lines(sa)


PeerPhase1 = list[tuple[Transform, IkeProposal, int, int, int]]


def peer_phase1(sa: SaPayload) -> PeerPhase1:
    """The peer's phase 1 transforms that we understand, decoded (once for all the candidates)."""
    peer: PeerPhase1 = []
    for prop in sa.proposals:
        if prop.protocol != PROTO_ISAKMP:
            continue
        for t in prop.transforms:
            try:
                p, auth, secs, kb = decode_phase1_transform(t)
            except (Unsupported, DecodeError):
                continue
            peer.append((t, p, auth, secs, kb))
    return peer


def choose_phase1(ours: tuple[IkeProposal, ...], our_auth: AuthMethod, peer: PeerPhase1) -> Phase1Choice | None:
    """`select_phase1`'s choice, from the decoded peer transforms."""
    for mine in ours:
        for t, p, auth, secs, kb in peer:
            if p == mine and auth_from_value(auth) is our_auth:
                return Phase1Choice(p, auth, secs, kb, t)
    return None


def phase1_lines(sa: SaPayload) -> list[str]:
    """The peer's phase 1 offer as text lines (for a failure message: only built for one)."""
    lines: list[str] = []
    for prop in sa.proposals:
        if prop.protocol != PROTO_ISAKMP:
            lines.append(f"proposal {prop.number}: protocol {prop.protocol} is not ISAKMP")
            continue
        lines += [describe_phase1(t) for t in prop.transforms]
    return lines


# --- phase 2 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase2Choice:
    proposal: EspProposal
    protocol: int  # PROTO_ESP / PROTO_AH
    peer_spi: bytes
    encap: int
    group: int
    lifetime_s: int
    lifetime_kb: int
    transform: Transform
    number: int


# A responder answers every quick mode of a definition with the same transform (immutable): build it once.
@functools.lru_cache(maxsize=1024)
def phase2_transform(
    num: int, protocol: int, p: EspProposal, encap: int, group: int, life_s: int, life_kb: int
) -> Transform:
    attrs = [Attr(P2_LIFE_TYPE, LIFE_SECONDS), Attr(P2_LIFE_DURATION, life_s)]
    if life_kb:
        attrs += [Attr(P2_LIFE_TYPE, LIFE_KB), Attr(P2_LIFE_DURATION, life_kb)]
    if group:
        attrs.append(Attr(P2_GROUP, group))
    attrs.append(Attr(P2_ENCAP, encap))
    if protocol == PROTO_AH:
        if p.integ is None or p.integ not in _AH_IDS:
            raise ValueError(f"AH needs an integrity algorithm, not {p}")
        auth_id = INTEG[p.integ].v1_auth_id
        assert auth_id is not None
        attrs.append(Attr(P2_AUTH, auth_id))
        return Transform(num, _AH_IDS[p.integ], tuple(attrs))
    e = ENCR[p.encr]
    if e.v1_esp_id is None:
        raise ValueError(f"{p.encr} is not defined for ESP with IKEv1")
    if p.integ is not None:
        auth_id = INTEG[p.integ].v1_auth_id
        if auth_id is None:
            raise ValueError(f"{p.integ} is not defined for IKEv1 ESP")
        attrs.append(Attr(P2_AUTH, auth_id))
    if e.keylen_attr:
        attrs.append(Attr(P2_KEYLEN, p.encr_keylen))
    if p.esn:
        attrs.append(Attr(P2_ESN, 1))
    return Transform(num, e.v1_esp_id, tuple(attrs))


def phase2_sa(
    protocol: int, spi: bytes, proposals: tuple[EspProposal, ...], encap: int, group: int, life_s: int, life_kb: int
) -> SaPayload:
    ts = tuple(phase2_transform(i + 1, protocol, p, encap, group, life_s, life_kb) for i, p in enumerate(proposals))
    return SaPayload((Proposal(1, protocol, spi, ts),))


def decode_phase2_transform(protocol: int, t: Transform) -> tuple[EspProposal, int, int, int, int]:
    """(proposal, encapsulation mode, group, life seconds, life kilobytes)."""
    vals: dict[int, int] = {}
    for a in t.attrs:
        at = a.type
        if at in (P2_LIFE_TYPE, P2_LIFE_DURATION):
            continue
        if at not in _P2_KNOWN:
            raise Unsupported(f"phase 2 attribute {at} is not supported")
        v = a.value
        vals[at] = v if type(v) is int else a.as_int()
    integ = None
    if P2_AUTH in vals:
        integ = _INTEG_BY_AUTH_ID.get(vals[P2_AUTH])
        if integ is None:
            raise Unsupported(f"authentication algorithm {vals[P2_AUTH]}")
    encap = vals.get(P2_ENCAP, ENCAP_TUNNEL)
    if encap not in ENCAP_MODES:
        raise Unsupported(f"encapsulation mode {encap}")
    group = vals.get(P2_GROUP, 0)
    if group and group not in DH:
        raise Unsupported(f"PFS group {group}")
    secs, kb = _lifetimes(t, P2_LIFE_TYPE, P2_LIFE_DURATION)
    if protocol == PROTO_AH:
        name = _AH_BY_ID.get(t.transform_id)
        if name is None or name != integ:
            raise Unsupported(f"AH transform {t.transform_id}")
        return EspProposal("null", 0, name), encap, group, secs, kb
    encr = _ENCR_BY_ESP_ID.get(t.transform_id)
    if encr is None:
        raise Unsupported(f"ESP transform {t.transform_id}")
    e = ENCR[encr]
    keylen = vals.get(P2_KEYLEN, 0 if e.keylen_attr else e.key_lengths[0])
    if keylen == 0 and encr == "aes-cbc":
        keylen = 128  # RFC 3602: the Key Length attribute may be omitted for AES-128
    if keylen not in e.key_lengths:
        raise Unsupported(f"{encr} key length {keylen}")
    if e.aead and integ is not None:
        raise Unsupported(f"{encr} with an authentication algorithm")
    if not e.aead and integ is None:
        raise Unsupported(f"{encr} without an authentication algorithm")
    return EspProposal(encr, keylen, integ, bool(vals.get(P2_ESN, 0))), encap, group, secs, kb


def describe_phase2(protocol: int, t: Transform) -> str:
    try:
        p, encap, group, secs, _kb = decode_phase2_transform(protocol, t)
    except (Unsupported, DecodeError) as e:
        return f"transform {t.number}: unsupported ({e})"
    mode, udp = ENCAP_MODES[encap]
    pname = "ah " + (p.integ or "") if protocol == PROTO_AH else f"esp {p}"
    return f"{pname} {mode}{' udp' if udp else ''}{f' pfs dh{group}' if group else ''} life {secs}s"


def select_phase2(
    ours: tuple[EspProposal, ...], protocol: int, group: int, sa: SaPayload
) -> tuple[Phase2Choice | None, list[str], str]:
    """(choice, the peer's offer as text, why nothing matched)."""
    choice, why = choose_phase2(ours, protocol, group, sa)
    return choice, phase2_lines(sa), why


def _bundled(sa: SaPayload, number: int) -> bool:
    return sum(1 for q in sa.proposals if q.number == number) > 1


def choose_phase2(
    ours: tuple[EspProposal, ...], protocol: int, group: int, sa: SaPayload
) -> tuple[Phase2Choice | None, str]:
    """`select_phase2` without the text lines (built only for a failure, by `phase2_lines`)."""
    peer: list[tuple[Proposal, Transform, EspProposal, int, int, int, int]] = []
    several = len(sa.proposals) > 1
    for prop in sa.proposals:
        if prop.protocol not in (PROTO_ESP, PROTO_AH):
            continue
        if (several and _bundled(sa, prop.number)) or len(prop.spi) != 4:
            continue
        for t in prop.transforms:
            try:
                p, encap, g, secs, kb = decode_phase2_transform(prop.protocol, t)
            except (Unsupported, DecodeError):
                continue
            peer.append((prop, t, p, encap, g, secs, kb))
    why = "no transform matches"
    for mine in ours:
        for prop, t, p, encap, g, secs, kb in peer:
            if prop.protocol != protocol:
                continue
            if protocol == PROTO_AH:
                if p.integ != mine.integ:
                    continue
            elif p != mine:
                continue
            if g != group:
                why = f"PFS group: we want {group or 'none'}, peer offers {g or 'none'}"
                continue
            return Phase2Choice(mine, protocol, prop.spi, encap, g, secs, kb, t, prop.number), ""
    return None, why


def phase2_lines(sa: SaPayload) -> list[str]:
    """The peer's phase 2 offer as text lines (for a failure message: only built for one)."""
    lines: list[str] = []
    for prop in sa.proposals:
        if prop.protocol not in (PROTO_ESP, PROTO_AH):
            lines.append(f"proposal {prop.number}: protocol {prop.protocol} is not ESP or AH")
            continue
        bundled = _bundled(sa, prop.number)
        if len(prop.spi) != 4:
            lines.append(f"proposal {prop.number}: SPI of {len(prop.spi)} bytes")
            continue
        for t in prop.transforms:
            lines.append(describe_phase2(prop.protocol, t) + (" (bundle)" if bundled else ""))
    return lines


def key_lengths(protocol: int, p: EspProposal) -> tuple[int, int]:
    """(encryption key bytes incl. salt, integrity key bytes) for the KEYMAT split."""
    integ = INTEG[p.integ].key_len if p.integ else 0
    if protocol == PROTO_AH:
        return 0, integ
    e = ENCR[p.encr]
    return e.key_material_len(p.encr_keylen), integ
