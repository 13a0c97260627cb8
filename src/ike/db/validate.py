"""Checks on definitions before they are written: everything that can be said without the database.

Imports the transforms table; only the write path uses this module. X.500 DNs are parsed with the
engines' own parser (ike.proto.identity, which needs `cryptography`), imported only when a DN is
checked, so that every identity stored is one the engines can put on the wire.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from ike.db.model import DM_POLICY, GROUP, KM_POLICY, PHASE1, PHASE2, PSK, Definitions
from ike.policy import AuthMethod, DataManagementPolicy, Identity, IdType, PolicyError, TrafficSelector
from ike.proto import transforms

Problems = list[tuple[tuple[str, str], str]]

# Names appear in listings, XML attributes and namelist=; keep them printable and comma-free.
NAME_RE = re.compile(r"[A-Za-z0-9_.@:/+-][A-Za-z0-9_.@:/+ =-]{0,127}")
HOST_RE = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
AH_ENCR = "null"


def check_name(name: str) -> str | None:
    if not NAME_RE.fullmatch(name) or name != name.strip():
        return (
            f"name {name!r} is not usable: 1-128 characters, letters, digits and _.@:/+-= "
            "(no commas, no leading/trailing spaces)"
        )
    return None


def check_dm_proposals(p: DataManagementPolicy, version: int) -> str | None:
    for prop in p.proposals:
        try:
            if p.protocol == "ah":
                if prop.encr != AH_ENCR or prop.encr_keylen != 0:
                    return f"AH only authenticates: proposal {prop} must not name an encryption algorithm"
                if prop.integ not in transforms.INTEG:
                    return f"AH needs an integrity algorithm; known: {', '.join(sorted(transforms.INTEG))}"
            else:
                transforms.check_esp_proposal(prop, version)
        except PolicyError as e:
            return str(e)
    return None


def check_phase2_against_phase1(p: DataManagementPolicy, ike_version: int) -> str | None:
    msg = check_dm_proposals(p, ike_version)
    return f"with IPSecProtection {p.name!r} under an IKEv{ike_version} tunnel: {msg}" if msg else None


def is_host_name(text: str) -> bool:
    """RFC 1123 host name syntax; an all-digit last label is not one (RFC 3696 §2), so that a
    mistyped address such as 198.18.0.300 is not taken for a name."""
    if not HOST_RE.fullmatch(text):
        return False
    return not text.rstrip(".").rsplit(".", 1)[-1].isdigit()


def _addr_or_host(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    if is_host_name(text):
        return None
    return f"{text!r} is neither an IP address nor a host name"


# RFC 5322 dot-atom characters: what a user part of user@domain may hold.
USER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def identity_problem(ident: Identity) -> str | None:
    """What is wrong with `ident` as an identity of its type, or None."""
    try:
        ident.check()
    except PolicyError as e:
        return str(e)
    v = ident.value
    if not v or v != v.strip():
        return f"{ident.type.label} identity {v!r} is empty or has spaces around it"
    if ident.type is IdType.FQDN and not is_host_name(v):
        return (
            f"FQDN identity {v!r} is not a host name: labels of letters, digits and hyphens "
            "separated by dots, the last one not all digits (e.g. gw1.example.com)"
        )
    if ident.type is IdType.USER_FQDN:
        user, _, domain = v.rpartition("@")
        if not USER_RE.fullmatch(user) or not (is_host_name(domain) or is_ip(domain)):
            return f"user FQDN identity {v!r} is not of the form user@host.domain (e.g. alice@example.org)"
    if ident.type is IdType.DN:
        from ike.proto.identity import IdentityError, parse_dn

        try:
            parse_dn(v)
        except IdentityError as e:
            return str(e).rstrip(": ")
    if ident.type is IdType.KEY_ID:
        if not v.isprintable():
            return f"key id {v!r} has control characters"
        if v.lower().startswith("0x"):
            try:
                bytes.fromhex(v[2:])
            except ValueError:
                return f"key id {v!r} is not hexadecimal after 0x (an even number of 0-9, a-f)"
    return None


def _group_cycles(members: dict[str, Sequence[str]]) -> list[tuple[str, list[str]]]:
    """Each group from which a chain of member groups leads back to itself, with that chain: a member
    that names a group stands for that group's members (as `remid=` expands it)."""
    out: list[tuple[str, list[str]]] = []
    for start in members:
        path, seen = [start], {start}  # seen: each group is explored once per start
        stack = [iter(members[start])]
        while stack:
            m = next(stack[-1], None)
            if m is None:
                stack.pop()
                path.pop()
            elif m == start:
                out.append((start, [*path, start]))
                break
            elif m in members and m not in seen:
                seen.add(m)
                path.append(m)
                stack.append(iter(members[m]))
    return out


def member_problem(text: str) -> str | None:
    """A group member is a remote ID as `remid=` takes it: a phase 2 ID (address, subnet, range)
    or a phase 1 ID, whose type is guessed as ike.policy.Identity.parse does."""
    try:
        TrafficSelector.parse(text)
        return None
    except PolicyError:
        pass
    if re.fullmatch(r"[0-9.]+", text):
        return f"{text!r} is not an IP address (four numbers 0-255, e.g. 198.18.0.3)"
    try:
        why = identity_problem(Identity.parse(text))
    except PolicyError as e:
        why = str(e)
    if why is None:
        return None
    return (
        f"{text!r} is not a remote ID: {why}; a member is an address, subnet (a/len), range (a-b), "
        "host name, user@host or DN"
    )


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_definitions(defs: Definitions) -> Problems:
    problems: Problems = []

    def bad(kind: str, name: str, msg: str) -> None:
        problems.append(((kind, name), msg))

    for kind, names in (
        (KM_POLICY, [p.name for p in defs.km_policies]),
        (DM_POLICY, [p.name for p in defs.dm_policies]),
        (PHASE1, [t.name for t in defs.phase1]),
        (PHASE2, [t.name for t in defs.phase2]),
        (GROUP, [g.name for g in defs.groups]),
    ):
        seen: set[str] = set()
        for n in names:
            if (msg := check_name(n)) is not None:
                bad(kind, n, msg)
            if n in seen:
                bad(kind, n, "defined twice")
            seen.add(n)
    for kind, numbered in ((PHASE1, defs.phase1), (PHASE2, defs.phase2)):
        used: dict[int, str] = {}
        for t in numbered:
            if t.number is None:
                continue
            if not 1 <= t.number <= 2**31 - 1:
                bad(kind, t.name, f"tunnel number {t.number} is outside 1-{2**31 - 1}")
            elif t.number in used:
                bad(kind, t.name, f"tunnel number {t.number} is also given to {used[t.number]!r}")
            used[t.number] = t.name

    for kp in defs.km_policies:
        try:
            kp.check()
            for prop in kp.proposals:
                transforms.check_ike_proposal(prop, kp.version)
        except PolicyError as e:
            bad(KM_POLICY, kp.name, str(e))
            continue
        if kp.version == 2 and kp.mode != "main":
            bad(KM_POLICY, kp.name, "aggressive mode is an IKEv1 exchange; IKEv2 has one exchange mode (use Main)")
        if kp.version == 2 and kp.lifetime_kb:
            bad(KM_POLICY, kp.name, "a lifetime in kilobytes is an IKEv1 phase 1 feature; leave it 0 for IKEv2")
        if kp.dpd_delay_s < 0:
            bad(KM_POLICY, kp.name, "the DPD delay cannot be negative (0 turns liveness checks off)")

    for dp in defs.dm_policies:
        try:
            dp.check()
        except PolicyError as e:
            bad(DM_POLICY, dp.name, str(e))
            continue
        if dp.pfs_group and dp.pfs_group not in transforms.DH:
            bad(
                DM_POLICY,
                dp.name,
                f"unknown PFS group {dp.pfs_group}; known: {', '.join(map(str, sorted(transforms.DH)))}",
            )
        # Checked against IKEv2 here; the tunnel that uses it is checked against its own version.
        v1 = check_dm_proposals(dp, 1)
        v2 = check_dm_proposals(dp, 2)
        if v1 and v2:
            bad(DM_POLICY, dp.name, v2)

    for t1 in defs.phase1:
        for what, ident in (("local", t1.local_id), ("remote", t1.remote_id)):
            if (msg := identity_problem(ident)) is not None:
                bad(PHASE1, t1.name, f"{what} identity: {msg}")
        if t1.local_addr:
            try:
                ipaddress.ip_address(t1.local_addr)
            except ValueError:
                bad(PHASE1, t1.name, f"local address {t1.local_addr!r} is not an IP address")
        if not t1.remote_addr:
            bad(PHASE1, t1.name, "no remote address: give IKE_RemoteAddress, or a remote identity that is an address")
        elif (msg := _addr_or_host(t1.remote_addr)) is not None:
            bad(PHASE1, t1.name, f"remote address: {msg}")
        else:
            try:
                la = ipaddress.ip_address(t1.local_addr) if t1.local_addr else None
                ra = ipaddress.ip_address(t1.remote_addr)
                if la is not None and la.version != ra.version:
                    bad(PHASE1, t1.name, "local and remote addresses must both be IPv4 or both IPv6")
            except ValueError:
                pass
        if (t1.cert_file is None) != (t1.key_file is None):
            bad(PHASE1, t1.name, "a certificate needs its private key file and the other way round")
        policy_of = next((p for p in defs.km_policies if p.name == t1.policy), None)
        if policy_of is not None and policy_of.auth is not AuthMethod.PSK and t1.cert_file is None:
            bad(
                PHASE1,
                t1.name,
                f"IKEProtection {policy_of.name!r} authenticates with {policy_of.auth.value} signatures: give "
                "IKE_CertificateFile, IKE_PrivateKeyFile and IKE_CAFile",
            )

    for t2 in defs.phase2:
        if t2.local_ts.version != t2.remote_ts.version:
            bad(PHASE2, t2.name, "local and remote identities must both be IPv4 or both IPv6")

    for g in defs.groups:
        if not g.members:
            bad(GROUP, g.name, "a group needs at least one member")
        if len(set(g.members)) != len(g.members):
            bad(GROUP, g.name, "a member is listed twice")
        for m in g.members:
            if (msg := member_problem(m)) is not None:
                bad(GROUP, g.name, f"member {msg}")
    for name, cycle in _group_cycles({g.name: g.members for g in defs.groups}):
        chain = " -> ".join(cycle)
        bad(GROUP, name, f"the group contains itself ({chain}): remid={name} would never end; remove a member")

    seen_ids: set[tuple[IdType, str]] = set()
    for k in defs.psks:
        label = f"{k.identity.type.label}:{k.identity.value}"
        if (msg := identity_problem(k.identity)) is not None:
            bad(PSK, label, msg)
        if not k.key:
            bad(PSK, label, "the key is empty")
        key = (k.identity.type, k.identity.value)
        if key in seen_ids:
            bad(PSK, label, "two keys for one identity")
        seen_ids.add(key)
    return problems
