"""Between the policy model (IkeProposal / EspProposal) and IKEv1 SA payloads, in both directions,
and proposal choice in local policy order (the responder walks its own list and takes the first
entry any peer transform matches). Wire numbers come from the shared `transforms` table.

Phase 1 attributes: RFC 2409 appendix A; phase 2 attributes: RFC 2407 §4.5, RFC 3947 §5.1.
"""

from __future__ import annotations

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
        if a.type in (P1_LIFE_TYPE, P1_LIFE_DURATION):
            continue
        if a.type not in (P1_ENCR, P1_HASH, P1_AUTH, P1_GROUP, P1_KEYLEN):
            raise Unsupported(f"phase 1 attribute {a.type} is not supported")
        vals[a.type] = a.as_int()
    for need, name in ((P1_ENCR, "encryption"), (P1_HASH, "hash"), (P1_AUTH, "auth method"), (P1_GROUP, "group")):
        if need not in vals:
            raise Unsupported(f"no {name} attribute")
    encr = next((n for n, e in ENCR.items() if e.v1_ike_id == vals[P1_ENCR]), None)
    prf = next((n for n, p in PRF.items() if p.v1_hash_id == vals[P1_HASH]), None)
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
    peer: list[tuple[Transform, IkeProposal, int, int, int]] = []
    lines: list[str] = []
    for prop in sa.proposals:
        if prop.protocol != PROTO_ISAKMP:
            lines.append(f"proposal {prop.number}: protocol {prop.protocol} is not ISAKMP")
            continue
        for t in prop.transforms:
            lines.append(describe_phase1(t))
            try:
                p, auth, secs, kb = decode_phase1_transform(t)
            except (Unsupported, DecodeError):
                continue
            peer.append((t, p, auth, secs, kb))
    for mine in ours:
        for t, p, auth, secs, kb in peer:
            if p == mine and auth_from_value(auth) is our_auth:
                return Phase1Choice(p, auth, secs, kb, t), lines
    return None, lines


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
        if a.type in (P2_LIFE_TYPE, P2_LIFE_DURATION):
            continue
        if a.type not in (P2_GROUP, P2_ENCAP, P2_AUTH, P2_KEYLEN, P2_ESN):
            raise Unsupported(f"phase 2 attribute {a.type} is not supported")
        vals[a.type] = a.as_int()
    integ = None
    if P2_AUTH in vals:
        integ = next((n for n, i in INTEG.items() if i.v1_auth_id == vals[P2_AUTH]), None)
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
        name = next((n for n, tid in _AH_IDS.items() if tid == t.transform_id), None)
        if name is None or name != integ:
            raise Unsupported(f"AH transform {t.transform_id}")
        return EspProposal("null", 0, name), encap, group, secs, kb
    encr = next((n for n, e in ENCR.items() if e.v1_esp_id == t.transform_id), None)
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
    lines: list[str] = []
    peer: list[tuple[Proposal, Transform, EspProposal, int, int, int, int]] = []
    for prop in sa.proposals:
        if prop.protocol not in (PROTO_ESP, PROTO_AH):
            lines.append(f"proposal {prop.number}: protocol {prop.protocol} is not ESP or AH")
            continue
        bundled = sum(1 for q in sa.proposals if q.number == prop.number) > 1
        if len(prop.spi) != 4:
            lines.append(f"proposal {prop.number}: SPI of {len(prop.spi)} bytes")
            continue
        for t in prop.transforms:
            lines.append(describe_phase2(prop.protocol, t) + (" (bundle)" if bundled else ""))
            if bundled:
                continue
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
            return Phase2Choice(mine, protocol, prop.spi, encap, g, secs, kb, t, prop.number), lines, ""
    return None, lines, why


def key_lengths(protocol: int, p: EspProposal) -> tuple[int, int]:
    """(encryption key bytes incl. salt, integrity key bytes) for the KEYMAT split."""
    integ = INTEG[p.integ].key_len if p.integ else 0
    if protocol == PROTO_AH:
        return 0, integ
    e = ENCR[p.encr]
    return e.key_material_len(p.encr_keylen), integ
