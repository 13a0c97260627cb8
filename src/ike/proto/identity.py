"""Phase 1 identities on the wire, shared by IKEv1 (RFC 2407 §4.6.2) and IKEv2 (RFC 7296 §3.5).

The ID type numbers of the types we support are the same in both versions (`policy.IdType`), so
this module maps (type, data) <-> `policy.Identity` once:

- IPv4 / IPv6: 4 / 16 address bytes.
- FQDN, USER_FQDN (RFC 822), KEY_ID: the text's bytes (KEY_ID "0x..." text is taken as hex).
- DER_ASN1_DN: the DER of an X.501 Name. The text form is RFC 4514 ("CN=gw,O=Example,C=US", most
  specific first); the order strongSwan prints ("C=US, O=Example, CN=gw") is accepted as well, and
  `identities_match` treats both orders of the same RDNs as the same name.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from cryptography import x509
from cryptography.x509.name import _ASN1Type

from ike.policy import Identity, IdType

__all__ = [
    "IdentityError",
    "dn_equal",
    "identities_match",
    "identity_from_wire",
    "identity_to_wire",
    "parse_dn",
]


class IdentityError(ValueError):
    """An identity that cannot be encoded or an ID payload that cannot be decoded."""


def parse_dn(text: str) -> x509.Name:
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError:
        pass
    # strongSwan / OpenSSL style with spaces after separators (and '/' separated one-line form).
    norm = re.sub(r"\s*(?<!\\)([,+])\s*", r"\1", text.strip())
    if norm.startswith("/"):
        norm = ",".join(reversed([p for p in norm.split("/") if p]))
    try:
        return x509.Name.from_rfc4514_string(norm)
    except ValueError as e:
        raise IdentityError(f"{text!r} is not a distinguished name (e.g. CN=gw1,O=Example,C=US): {e}") from None


def _norm_rdns(name: x509.Name) -> list[frozenset[tuple[str, str]]]:
    return [frozenset((a.oid.dotted_string, str(a.value).strip().lower()) for a in rdn) for rdn in name.rdns]


def dn_equal(a: x509.Name, b: x509.Name) -> bool:
    """Same RDNs in the same order, or in exactly reversed order (text written in the other
    convention); attribute values compare case-insensitively."""
    ra, rb = _norm_rdns(a), _norm_rdns(b)
    return ra == rb or ra == rb[::-1]


@functools.lru_cache(maxsize=4096)
def identity_to_wire(identity: Identity) -> tuple[int, bytes]:
    """(ID type number, identification data) for an ID payload."""
    t = identity.type
    try:
        if t is IdType.IPV4:
            return t.value, ipaddress.IPv4Address(identity.value).packed
        if t is IdType.IPV6:
            return t.value, ipaddress.IPv6Address(identity.value).packed
    except ValueError:
        raise IdentityError(
            f"identity {identity.value!r} is not an IPv{4 if t is IdType.IPV4 else 6} address"
        ) from None
    if t is IdType.DN:
        return t.value, parse_dn(identity.value).public_bytes()
    if t is IdType.KEY_ID and identity.value.lower().startswith("0x"):
        try:
            return t.value, bytes.fromhex(identity.value[2:])
        except ValueError:
            raise IdentityError(f"key id {identity.value!r} is not hexadecimal after 0x") from None
    return t.value, identity.value.encode()


def identity_from_wire(id_type: int, data: bytes) -> Identity:
    """Decode an ID payload's type and data; raise IdentityError naming what was wrong."""
    try:
        t = IdType(id_type)
    except ValueError:
        raise IdentityError(f"identity type {id_type} is not supported") from None
    if t is IdType.IPV4:
        if len(data) != 4:
            raise IdentityError(f"IPv4 identity is {len(data)} bytes, expected 4")
        return Identity(t, str(ipaddress.IPv4Address(data)))
    if t is IdType.IPV6:
        if len(data) != 16:
            raise IdentityError(f"IPv6 identity is {len(data)} bytes, expected 16")
        return Identity(t, str(ipaddress.IPv6Address(data)))
    if t is IdType.DN:
        try:
            name = _name_from_der(data)
        except ValueError as e:
            raise IdentityError(f"DER_ASN1_DN identity does not decode: {e}") from None
        return Identity(t, name.rfc4514_string())
    if t is IdType.KEY_ID:
        try:
            text = data.decode("ascii")
            if text.isprintable():
                return Identity(t, text)
        except UnicodeDecodeError:
            pass
        return Identity(t, "0x" + data.hex())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"{t.label} identity is not valid UTF-8 text") from None
    if not text or not text.isprintable():
        raise IdentityError(f"{t.label} identity {text!r} is empty or has control characters")
    return Identity(t, text)


def _name_from_der(data: bytes) -> x509.Name:
    """`cryptography` has no public DER Name parser: decode SEQUENCE OF SET OF SEQUENCE {OID, value}."""
    pos, rdns = 0, []
    tag, body, end = _tlv(data, 0)
    if tag != 0x30 or end != len(data):
        raise ValueError("not a SEQUENCE filling the whole payload")
    pos = body
    while pos < end:
        stag, sbody, send = _tlv(data, pos)
        if stag != 0x31:
            raise ValueError("RDN is not a SET")
        attrs = []
        p = sbody
        while p < send:
            atag, abody, aend = _tlv(data, p)
            if atag != 0x30:
                raise ValueError("attribute is not a SEQUENCE")
            otag, obody, oend = _tlv(data, abody)
            if otag != 0x06:
                raise ValueError("attribute type is not an OID")
            oid = _decode_oid(data[obody:oend])
            vtag, vbody, vend = _tlv(data, oend)
            if vend != aend:
                raise ValueError("attribute has trailing data")
            raw = data[vbody:vend]
            value = raw.decode("utf-16-be") if vtag == 0x1E else raw.decode("utf-8", errors="replace")
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(oid), value, _asn1_type(vtag)))
            p = aend
        if not attrs:
            raise ValueError("empty RDN")
        rdns.append(x509.RelativeDistinguishedName(attrs))
        pos = send
    return x509.Name(rdns)


def _asn1_type(tag: int) -> _ASN1Type:
    try:
        return _ASN1Type(tag)
    except ValueError:
        return _ASN1Type.UTF8String


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag = data[pos]
    ln = data[pos + 1]
    pos += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise ValueError("bad length")
        ln = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + ln > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + ln


def _decode_oid(b: bytes) -> str:
    if not b:
        raise ValueError("empty OID")
    parts: list[int] = []
    v = 0
    for byte in b:
        v = (v << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(v)
            v = 0
    if v:
        raise ValueError("truncated OID")
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(map(str, head + parts[1:]))


@functools.lru_cache(maxsize=4096)
def _canon(identity: Identity) -> object:
    t = identity.type
    if t in (IdType.IPV4, IdType.IPV6):
        try:
            return ipaddress.ip_address(identity.value)
        except ValueError:
            return identity.value
    if t in (IdType.FQDN, IdType.USER_FQDN):
        return identity.value.lower().rstrip(".")
    return identity.value


def identities_match(configured: Identity, received: Identity) -> bool:
    """Whether the identity a peer sent is the one a definition names (normalised comparison)."""
    if configured.type is not received.type:
        return False
    if configured.type is IdType.DN:
        try:
            return dn_equal(parse_dn(configured.value), parse_dn(received.value))
        except IdentityError:
            return False
    return _canon(configured) == _canon(received)
