"""The ikedb XML format (docs/database.md): read a whole file into Definitions, write Definitions back.

Reading collects every problem with its line before anything touches the database. The parser is
expat, which fetches nothing. A DOCTYPE that only names an external DTD is ignored, as AIX's ikedb
does; one with an internal subset is refused, so a file cannot declare and expand entities.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

from ike.db.model import (
    DM_POLICY,
    GROUP,
    KM_POLICY,
    PHASE1,
    PHASE2,
    PSK,
    Definitions,
    Phase1Spec,
    Phase2Spec,
    PresharedKey,
)
from ike.db.validate import AH_ENCR, identity_problem, is_ip, member_problem
from ike.policy import (
    AuthMethod,
    DataManagementPolicy,
    DpdAction,
    EspProposal,
    Group,
    Identity,
    IdType,
    IkeProposal,
    KeyManagementPolicy,
    PolicyError,
    TrafficSelector,
)
from ike.proto import transforms

ROOT = "AIX_VPN"


class XmlError(Exception):
    """Problems found in a file: each one is (line, message). Nothing was written."""

    def __init__(self, filename: str, problems: list[tuple[int, str]]) -> None:
        self.filename = filename
        self.problems = sorted(problems)
        super().__init__("\n".join(f"{filename}:{line}: {msg}" for line, msg in self.problems))


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[Node] = field(default_factory=list)


class _PrologDone(Exception):
    pass


def _without_external_doctype(data: bytes, filename: str) -> bytes:
    """`data` with an external-only DOCTYPE blanked out (newlines kept, so line numbers stay).

    Ignoring it by parsing around it would not do: with an external subset declared, XML makes
    undeclared entities legal and expat silently drops `&name;` from attribute values. Without the
    DOCTYPE every such reference is the error it is here (nothing declares entities)."""
    parser = expat.ParserCreate()
    found: list[tuple[int, int]] = []

    def doctype(name: str, system_id: str | None, public_id: str | None, internal: int) -> None:
        if internal:
            raise XmlError(
                filename,
                [
                    (
                        parser.CurrentLineNumber,
                        "a DOCTYPE with an internal subset ([...]) is not accepted: entity declarations "
                        "are not needed here and could expand without limit; remove the [...] part "
                        "(a DOCTYPE naming an external DTD is ignored)",
                    )
                ],
            )
        # Called at the DOCTYPE's closing '>'; nothing but the DOCTYPE's own literals lies between.
        end = parser.CurrentByteIndex
        found.append((data.rfind(b"<!DOCTYPE", 0, end), end + 1))

    def element(*_: object) -> None:
        raise _PrologDone

    parser.StartDoctypeDeclHandler = doctype
    parser.StartElementHandler = element
    try:
        parser.Parse(data, True)
    except (_PrologDone, expat.ExpatError):
        pass  # the real parse reports any error, with its line
    if not found or found[0][0] < 0:
        return data
    start, end = found[0]
    blank = bytes(b if b in b"\r\n" else 0x20 for b in data[start:end])
    return data[:start] + blank + data[end:]


def parse_tree(data: bytes, filename: str) -> Node:
    data = _without_external_doctype(data, filename)
    parser = expat.ParserCreate()
    root: list[Node] = []
    stack: list[Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        node = Node(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if data.strip():
            # The text is not shown: misplaced text in a file that holds keys may well be a key.
            where = f" inside <{stack[-1].tag}>" if stack else ""
            if any(n.tag == "IKEPresharedKey" for n in stack):
                if stack[-1].tag != "IKEPresharedKey":
                    where += " of an <IKEPresharedKey>"
                where += " (not shown: it may be a key)"
            raise XmlError(
                filename,
                [(parser.CurrentLineNumber, f'unexpected text{where}: values go in attributes, e.g. Value="..."')],
            )

    def doctype(*_: object) -> None:
        # Only reached when the DOCTYPE could not be blanked out (e.g. not in an 8-bit encoding).
        raise XmlError(filename, [(parser.CurrentLineNumber, "this DOCTYPE declaration cannot be ignored; remove it")])

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise XmlError(
            filename, [(e.lineno, f"not well-formed XML: {expat.ErrorString(e.code)} (column {e.offset + 1})")]
        ) from None
    if not root:
        raise XmlError(filename, [(1, "no elements")])
    return root[0]


# ---------------------------------------------------------------- reading


class _Reader:
    def __init__(self, filename: str, base_dir: Path) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self.problems: list[tuple[int, str]] = []
        self.lines: dict[tuple[str, str], int] = {}

    def bad(self, node: Node, msg: str) -> None:
        self.problems.append((node.line, f"<{node.tag}> {msg}"))

    def attrs(self, node: Node, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, str] | None:
        ok = True
        for a in node.attrs:
            if a not in required and a not in optional:
                self.bad(node, f"unknown attribute {a}; allowed: {', '.join(required + optional)}")
                ok = False
        for a in required:
            if a not in node.attrs:
                self.bad(node, f"needs attribute {a}")
                ok = False
            elif not node.attrs[a].strip():
                self.bad(node, f"attribute {a} is empty")
                ok = False
        return dict(node.attrs) if ok else None

    def int_attr(self, node: Node, attrs: dict[str, str], name: str, default: int, lo: int = 0) -> int:
        text = attrs.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]+", text.strip()):
            self.bad(node, f"{name}={text!r} is not a whole number")
            return default
        value = int(text)
        if value < lo or value > 2**31 - 1:
            self.bad(node, f"{name}={value} is outside {lo}-{2**31 - 1}")
        return value

    def yes_no(self, node: Node, attrs: dict[str, str], name: str) -> bool:
        text = attrs.get(name, "No")
        if text.lower() not in ("yes", "no"):
            self.bad(node, f"{name}={text!r}: use Yes or No")
        return text.lower() == "yes"

    def choice(self, node: Node, attrs: dict[str, str], name: str, table: dict[str, str], default: str) -> str:
        text = attrs.get(name)
        if text is None:
            return default
        value = table.get(text.lower())
        if value is None:
            self.bad(node, f"{name}={text!r}: use one of {', '.join(sorted(set(table)))}")
            return default
        return value

    def lifetime(self, node: Node, attrs: dict[str, str], prefix: str, default: int) -> int:
        s, m = f"{prefix}_KeyRefreshSeconds", f"{prefix}_KeyRefreshMinutes"
        if s in attrs and m in attrs:
            self.bad(node, f"give {s} or {m}, not both")
        if m in attrs:
            return self.int_attr(node, attrs, m, default // 60, lo=1) * 60
        return self.int_attr(node, attrs, s, default, lo=1)

    def only_children(self, node: Node, allowed: tuple[str, ...]) -> None:
        for c in node.children:
            if c.tag not in allowed:
                self.bad(c, f"is not allowed inside <{node.tag}>; allowed: {', '.join(allowed)}")

    def remember(self, kind: str, name: str, node: Node) -> None:
        first = self.lines.get((kind, name))
        if first is None:
            self.lines[(kind, name)] = node.line
            return
        # Reported at the second one: that is the line to delete or rename.
        if kind == PSK:
            ident = name.split(":", 1)[1]
            self.bad(node, f"a key for identity {ident!r} is defined twice (first at line {first}); remove one")
        else:
            self.bad(node, f"{name!r} is defined twice (first at line {first}); remove one or rename it")

    def keylen(self, node: Node, attrs: dict[str, str], attr: str, encr: str) -> int:
        known = transforms.ENCR.get(encr)
        if known is None:
            return 0  # the proposal check names the unknown cipher
        if attr not in attrs:
            if len(known.key_lengths) == 1:
                return known.key_lengths[0]
            self.bad(node, f"{encr} takes key lengths {', '.join(map(str, known.key_lengths))}: give {attr}")
            return 0
        return self.int_attr(node, attrs, attr, 0)

    # --- policies

    def km_policy(self, node: Node) -> KeyManagementPolicy | None:
        a = self.attrs(
            node,
            ("IKE_ProtectionName",),
            (
                "IKE_Version",
                "IKE_XCHGMode",
                "IKE_KeyRefreshSeconds",
                "IKE_KeyRefreshMinutes",
                "IKE_KeyRefreshKB",
                "IKE_AuthenticationMethod",
                "IKE_DPDDelaySeconds",
                "IKE_DPDAction",
            ),
        )
        if a is None:
            return None
        name = a["IKE_ProtectionName"]
        self.remember(KM_POLICY, name, node)
        version = self.choice(node, a, "IKE_Version", {"1": "1", "2": "2"}, "2")
        self.only_children(node, ("IKETransform",))
        proposals = []
        for t in node.children:
            if t.tag != "IKETransform":
                continue
            ta = self.attrs(t, ("IKE_Encryption", "IKE_PRF", "IKE_DHGroup"), ("IKE_KeyLength", "IKE_Integrity"))
            if ta is None:
                continue
            encr = ta["IKE_Encryption"].lower()
            prf = ta["IKE_PRF"].lower()
            integ = ta.get("IKE_Integrity", "").lower() or None
            known = transforms.ENCR.get(encr)
            if integ is None and version == "1" and known is not None and not known.aead:
                integ = transforms.INTEG_FOR_PRF.get(prf)  # IKEv1: one hash is both PRF and integrity
            prop = IkeProposal(
                encr, self.keylen(t, ta, "IKE_KeyLength", encr), integ, prf, self.int_attr(t, ta, "IKE_DHGroup", 0)
            )
            try:
                transforms.check_ike_proposal(prop, int(version))
            except PolicyError as e:
                self.bad(t, str(e))
            proposals.append(prop)
        if not proposals:
            self.bad(node, "needs at least one <IKETransform>")
        return KeyManagementPolicy(
            name=name,
            version=int(version),
            mode=self.choice(node, a, "IKE_XCHGMode", {"main": "main", "aggressive": "aggressive"}, "main"),
            proposals=tuple(proposals),
            lifetime_s=self.lifetime(node, a, "IKE", 28800),
            lifetime_kb=self.int_attr(node, a, "IKE_KeyRefreshKB", 0),
            auth=AuthMethod(self.choice(node, a, "IKE_AuthenticationMethod", AUTH_IN, "psk")),
            dpd_delay_s=self.int_attr(node, a, "IKE_DPDDelaySeconds", 30),
            dpd_action=DpdAction(self.choice(node, a, "IKE_DPDAction", {d.value: d.value for d in DpdAction}, "clear")),
        )

    def dm_policy(self, node: Node) -> DataManagementPolicy | None:
        a = self.attrs(
            node,
            ("IPSec_ProtectionName",),
            (
                "IPSec_PFSGroup",
                "IPSec_KeyRefreshSeconds",
                "IPSec_KeyRefreshMinutes",
                "IPSec_KeyRefreshKB",
                "IPSec_EncapsulationMode",
            ),
        )
        if a is None:
            return None
        name = a["IPSec_ProtectionName"]
        self.remember(DM_POLICY, name, node)
        self.only_children(node, ("IPSecESPProtocol", "IPSecAHProtocol"))
        kinds = {c.tag for c in node.children} & {"IPSecESPProtocol", "IPSecAHProtocol"}
        if len(kinds) > 1:
            self.bad(node, "mixes <IPSecESPProtocol> and <IPSecAHProtocol>: one protection uses one protocol")
        proposals = []
        for t in node.children:
            if t.tag == "IPSecESPProtocol":
                ta = self.attrs(t, ("ESP_Encryption",), ("ESP_KeyLength", "ESP_Authentication", "ESP_ExtendedSeqNum"))
                if ta is None:
                    continue
                encr = ta["ESP_Encryption"].lower()
                prop = EspProposal(
                    encr,
                    self.keylen(t, ta, "ESP_KeyLength", encr),
                    ta.get("ESP_Authentication", "").lower() or None,
                    self.yes_no(t, ta, "ESP_ExtendedSeqNum"),
                )
                errors = []
                for v in (2, 1):
                    try:
                        transforms.check_esp_proposal(prop, v)
                        break
                    except PolicyError as e:
                        errors.append(str(e))
                else:
                    self.bad(t, errors[0])
                proposals.append(prop)
            elif t.tag == "IPSecAHProtocol":
                ta = self.attrs(t, ("AH_Authentication",), ("AH_ExtendedSeqNum",))
                if ta is None:
                    continue
                integ = ta["AH_Authentication"].lower()
                if integ not in transforms.INTEG:
                    self.bad(t, f"unknown integrity algorithm {integ!r}; known: {', '.join(sorted(transforms.INTEG))}")
                proposals.append(EspProposal(AH_ENCR, 0, integ, self.yes_no(t, ta, "AH_ExtendedSeqNum")))
        if not proposals:
            self.bad(node, "needs at least one <IPSecESPProtocol> or <IPSecAHProtocol>")
        pfs_text = a.get("IPSec_PFSGroup", "none").strip().lower()
        pfs = 0
        if pfs_text not in ("none", "no_pfs", "0"):
            pfs = self.int_attr(node, a, "IPSec_PFSGroup", 0, lo=1)
            if pfs and pfs not in transforms.DH:
                self.bad(
                    node,
                    f"IPSec_PFSGroup={pfs}: unknown DH group; known: none, "
                    f"{', '.join(map(str, sorted(transforms.DH)))}",
                )
        return DataManagementPolicy(
            name=name,
            protocol="ah" if kinds == {"IPSecAHProtocol"} else "esp",
            proposals=tuple(proposals),
            pfs_group=pfs,
            lifetime_s=self.lifetime(node, a, "IPSec", 3600),
            lifetime_kb=self.int_attr(node, a, "IPSec_KeyRefreshKB", 0),
            mode=self.choice(
                node, a, "IPSec_EncapsulationMode", {"tunnel": "tunnel", "transport": "transport"}, "tunnel"
            ),
        )

    # --- identities

    def one_child(self, node: Node, wrapper: str) -> Node | None:
        found = [c for c in node.children if c.tag == wrapper]
        if len(found) != 1:
            if found:
                self.bad(found[1], f"given twice inside <{node.tag}>")
            return None
        inner = found[0].children
        if len(inner) != 1:
            self.bad(found[0], "needs exactly one identity element inside")
            return None
        return inner[0]

    def identity(self, node: Node) -> Identity | None:
        if node.tag not in ID_TAGS:
            self.bad(node, f"is not a phase 1 identity; use one of {', '.join(ID_TAGS)}")
            return None
        a = self.attrs(node, ("Value",), ())
        if a is None:
            return None
        ident = Identity(ID_TAGS[node.tag], a["Value"].strip())
        if (msg := identity_problem(ident)) is not None:
            self.bad(node, msg)
            return None
        if ident.type in (IdType.IPV4, IdType.IPV6):
            ident = Identity(ident.type, str(ipaddress.ip_address(ident.value)))
        return ident

    def selector(self, node: Node) -> TrafficSelector | None:
        if node.tag not in TS_TAGS:
            self.bad(node, f"is not a phase 2 identity; use one of {', '.join(TS_TAGS)}")
            return None
        family, shape = TS_TAGS[node.tag]
        need = {"address": ("Value",), "subnet": ("Value", "NetMask"), "range": ("From", "To")}[shape]
        a = self.attrs(node, need, ("Protocol", "Port"))
        if a is None:
            return None
        proto = 0
        if "Protocol" in a:
            p = a["Protocol"].strip().lower()
            proto = PROTOCOLS.get(p, -1) if not p.isdigit() else int(p)
            if not 0 <= proto <= 255:
                self.bad(node, f"Protocol={a['Protocol']!r}: a number 0-255 or one of {', '.join(PROTOCOLS)}")
                return None
        ports = (0, 65535)
        if "Port" in a:
            m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", a["Port"])
            if not m:
                self.bad(node, f"Port={a['Port']!r}: a port number or a range such as 1024-2047")
                return None
            lo = int(m.group(1))
            ports = (lo, int(m.group(2) or lo))
            if proto not in (6, 17, 132, 136):
                self.bad(node, "Port needs Protocol tcp, udp, sctp or udplite")
                return None
        try:
            if shape == "address":
                ts = TrafficSelector.parse(a["Value"].strip())
            elif shape == "subnet":
                mask = a["NetMask"].strip()
                try:
                    ts = TrafficSelector.subnet(f"{a['Value'].strip()}/{mask}")
                except ValueError:
                    self.bad(
                        node, f"NetMask={mask!r} is not a prefix length or a contiguous netmask for {a['Value']!r}"
                    )
                    return None
            else:
                ts = TrafficSelector.range(a["From"].strip(), a["To"].strip())
            ts = TrafficSelector(ts.start, ts.end, proto, *ports)
        except (PolicyError, ValueError) as e:
            self.bad(node, str(e))
            return None
        if ts.version != family:
            self.bad(node, f"holds IPv{ts.version} addresses; use the IPV{ts.version}_ element")
            return None
        return ts

    # --- tunnels

    def phase1(self, node: Node) -> Phase1Spec | None:
        a = self.attrs(
            node,
            ("IKE_TunnelName", "IKE_ProtectionRef"),
            (
                "IKE_TunnelNumber",
                "IKE_Flags_AutoStart",
                "IKE_LocalAddress",
                "IKE_RemoteAddress",
                "IKE_CertificateFile",
                "IKE_PrivateKeyFile",
                "IKE_CAFile",
            ),
        )
        if a is None:
            return None
        self.remember(PHASE1, a["IKE_TunnelName"], node)
        self.only_children(node, ("IKELocalIdentity", "IKERemoteIdentity"))
        ids: list[Identity | None] = []
        for w in ("IKELocalIdentity", "IKERemoteIdentity"):
            inner = self.one_child(node, w)
            if inner is None:
                if not any(c.tag == w for c in node.children):
                    self.bad(node, f"needs <{w}>")
                ids.append(None)
            else:
                ids.append(self.identity(inner))
        local, remote = ids
        if local is None or remote is None:
            return None

        def addr(attr: str, ident: Identity) -> str:
            if attr in a:
                text = a[attr].strip()
                try:
                    return str(ipaddress.ip_address(text))
                except ValueError:
                    return text
            return ident.value if ident.type in (IdType.IPV4, IdType.IPV6) else ""

        return Phase1Spec(
            name=a["IKE_TunnelName"],
            local_id=local,
            remote_id=remote,
            local_addr=addr("IKE_LocalAddress", local),
            remote_addr=addr("IKE_RemoteAddress", remote),
            policy=a["IKE_ProtectionRef"],
            cert_file=self.path(a.get("IKE_CertificateFile")),
            key_file=self.path(a.get("IKE_PrivateKeyFile")),
            ca_file=self.path(a.get("IKE_CAFile")),
            autostart=self.yes_no(node, a, "IKE_Flags_AutoStart"),
            number=self.int_attr(node, a, "IKE_TunnelNumber", 0, lo=1) or None if "IKE_TunnelNumber" in a else None,
        )

    def path(self, text: str | None) -> str | None:
        if text is None:
            return None
        # Relative paths are relative to the XML file, so examples/ works from anywhere.
        return os.path.normpath(self.base_dir / text.strip())

    def phase2(self, node: Node, phase1s: dict[str, Phase1Spec]) -> Phase2Spec | None:
        a = self.attrs(
            node,
            ("IPSec_TunnelName", "IKE_TunnelName", "IPSec_ProtectionRef"),
            ("IPSec_TunnelNumber", "IPSec_Flags_AutoStart"),
        )
        if a is None:
            return None
        self.remember(PHASE2, a["IPSec_TunnelName"], node)
        self.only_children(node, ("IPSecLocalIdentity", "IPSecRemoteIdentity"))
        sels: list[TrafficSelector | None] = []
        for w, which in (("IPSecLocalIdentity", "local_addr"), ("IPSecRemoteIdentity", "remote_addr")):
            inner = self.one_child(node, w)
            if inner is not None:
                sels.append(self.selector(inner))
            elif any(c.tag == w for c in node.children):
                sels.append(None)
            else:
                # Host to host: default to the phase 1 tunnel's address (only when it is in this file).
                p1 = phase1s.get(a["IKE_TunnelName"])
                text = getattr(p1, which) if p1 else ""
                try:
                    sels.append(TrafficSelector.host(text))
                except ValueError:
                    self.bad(
                        node,
                        f"needs <{w}> (it defaults to the IKETunnel's address only when that "
                        "tunnel is in the same file and its address is an IP address)",
                    )
                    sels.append(None)
        local, remote = sels
        if local is None or remote is None:
            return None
        return Phase2Spec(
            name=a["IPSec_TunnelName"],
            phase1=a["IKE_TunnelName"],
            local_ts=local,
            remote_ts=remote,
            policy=a["IPSec_ProtectionRef"],
            autostart=self.yes_no(node, a, "IPSec_Flags_AutoStart"),
            number=self.int_attr(node, a, "IPSec_TunnelNumber", 0, lo=1) or None if "IPSec_TunnelNumber" in a else None,
        )

    def group(self, node: Node) -> Group | None:
        a = self.attrs(node, ("IKE_GroupName",), ())
        if a is None:
            return None
        self.remember(GROUP, a["IKE_GroupName"], node)
        self.only_children(node, ("IKEGroupMember",))
        members = []
        for m in node.children:
            if m.tag == "IKEGroupMember":
                ma = self.attrs(m, ("Value",), ())
                if ma is None:
                    continue
                member = ma["Value"].strip()
                if (msg := member_problem(member)) is not None:
                    self.bad(m, msg)
                members.append(member)
        return Group(a["IKE_GroupName"], tuple(members))

    def psk(self, node: Node) -> PresharedKey | None:
        a = self.attrs(node, ("Value",), ("Format",))
        self.only_children(node, ("PK_Identity",))
        inner = self.one_child(node, "PK_Identity")
        if inner is None and not any(c.tag == "PK_Identity" for c in node.children):
            self.bad(node, "needs <PK_Identity> naming the peer that shares this key")
        ident = self.identity(inner) if inner is not None else None
        if a is None or ident is None:
            return None
        self.remember(PSK, f"{ident.type.label}:{ident.value}", node)
        fmt = self.choice(node, a, "Format", {"ascii": "ascii", "hex": "hex"}, "ascii")
        if fmt == "hex":
            try:
                key = bytes.fromhex(a["Value"])
            except ValueError:
                self.bad(node, 'Value is not hexadecimal (Format="Hex")')
                return None
        else:
            key = a["Value"].encode()
        return PresharedKey(ident, key)


AUTH_IN = {
    "preshared_key": "psk",
    "psk": "psk",
    "rsa_signature": "rsa",
    "rsa": "rsa",
    "ecdsa_signature": "ecdsa",
    "ecdsa": "ecdsa",
    "ed25519_signature": "ed25519",
    "ed25519": "ed25519",
}
AUTH_OUT = {"psk": "Preshared_key", "rsa": "RSA_signature", "ecdsa": "ECDSA_signature", "ed25519": "Ed25519_signature"}
ID_TAGS = {
    "IPV4_Address": IdType.IPV4,
    "IPV6_Address": IdType.IPV6,
    "FQDN": IdType.FQDN,
    "User_FQDN": IdType.USER_FQDN,
    "X500DN": IdType.DN,
    "KEY_ID": IdType.KEY_ID,
}
ID_TAG_OF = {v: k for k, v in ID_TAGS.items()}
TS_TAGS = {
    "IPV4_Address": (4, "address"),
    "IPV6_Address": (6, "address"),
    "IPV4_Subnet": (4, "subnet"),
    "IPV6_Subnet": (6, "subnet"),
    "IPV4_Address_Range": (4, "range"),
    "IPV6_Address_Range": (6, "range"),
}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "ipv6-icmp": 58, "sctp": 132, "udplite": 136}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
TOP = ("IKEProtection", "IPSecProtection", "IKETunnel", "IPSecTunnel", "IKEGroup", "IKEPresharedKey")


def read_definitions(
    data: bytes, filename: str, base_dir: Path | None = None
) -> tuple[Definitions, dict[tuple[str, str], int]]:
    """Parse a whole file. Returns the definitions and, for error reporting, the line of each entry.
    Raises XmlError listing every problem found."""
    root = parse_tree(data, filename)
    r = _Reader(filename, base_dir if base_dir is not None else Path(filename).resolve().parent)
    if root.tag != ROOT:
        raise XmlError(filename, [(root.line, f"the document element must be <{ROOT}>, not <{root.tag}>")])
    r.attrs(root, (), ("Version",))
    defs = Definitions()
    for c in root.children:
        if c.tag not in TOP:
            r.bad(c, f"is not an ikedb element; use {', '.join(TOP)}")
    phase1_nodes = [c for c in root.children if c.tag == "IKETunnel"]
    for c in root.children:
        if c.tag == "IKEProtection" and (kp := r.km_policy(c)) is not None:
            defs.km_policies.append(kp)
        elif c.tag == "IPSecProtection" and (dp := r.dm_policy(c)) is not None:
            defs.dm_policies.append(dp)
        elif c.tag == "IKEGroup" and (g := r.group(c)) is not None:
            defs.groups.append(g)
        elif c.tag == "IKEPresharedKey" and (k := r.psk(c)) is not None:
            defs.psks.append(k)
    for c in phase1_nodes:
        if (t1 := r.phase1(c)) is not None:
            defs.phase1.append(t1)
    by_name = {t.name: t for t in defs.phase1}
    for c in root.children:
        if c.tag == "IPSecTunnel" and (t2 := r.phase2(c, by_name)) is not None:
            defs.phase2.append(t2)
    if r.problems:
        raise XmlError(filename, r.problems)
    return defs, r.lines


def problems_to_lines(
    problems: list[tuple[tuple[str, str], str]], lines: dict[tuple[str, str], int]
) -> list[tuple[int, str]]:
    return [(lines.get(key, 0), f"<{key[0]}> {key[1]!r}: {msg}" if key[1] else msg) for key, msg in problems]


# ---------------------------------------------------------------- swapping


def swap(defs: Definitions, notes: list[str] | None = None) -> Definitions:
    """What the peer needs: local and remote identities, addresses and selectors exchanged, and
    each pre-shared key filed under the identity the peer will see (this side's local ID).
    Tunnel numbers are dropped (the peer numbers its own). Keys no exported tunnel uses are left out.

    A remote address that is a host name becomes "any local address" at the peer, as in a file
    written there by hand: the peer sends from whatever address routes to us (strongSwan's
    local_addrs=%any), while its own name is no address to bind to. Such changes are appended to
    `notes` for the user."""
    if any(t1.local_addr == "" for t1 in defs.phase1):
        names = ", ".join(t.name for t in defs.phase1 if not t.local_addr)
        raise ValueError(f"cannot swap IKETunnel {names}: it has no local address for the peer to use as remote")
    by_name: list[tuple[Phase1Spec, str]] = []
    for t1 in defs.phase1:
        peer_local = t1.remote_addr
        if not is_ip(peer_local):
            peer_local = ""
            if notes is not None:
                notes.append(
                    f"IKETunnel {t1.name!r}: the remote address {t1.remote_addr!r} is a host name, so the "
                    "peer's side leaves IKE_LocalAddress out and sends from any of its addresses"
                )
        by_name.append((t1, peer_local))
    psks = {(k.identity.type, k.identity.value): k.key for k in defs.psks}
    swapped_psks: dict[tuple[IdType, str], PresharedKey] = {}
    for t1 in defs.phase1:
        key = psks.get((t1.remote_id.type, t1.remote_id.value))
        if key is not None:
            swapped_psks.setdefault((t1.local_id.type, t1.local_id.value), PresharedKey(t1.local_id, key))
    return Definitions(
        km_policies=list(defs.km_policies),
        dm_policies=list(defs.dm_policies),
        phase1=[
            replace(
                t,
                local_id=t.remote_id,
                remote_id=t.local_id,
                local_addr=peer_local,
                remote_addr=t.local_addr,
                number=None,
            )
            for t, peer_local in by_name
        ],
        phase2=[replace(t, local_ts=t.remote_ts, remote_ts=t.local_ts, number=None) for t in defs.phase2],
        groups=list(defs.groups),
        psks=list(swapped_psks.values()),
    )


# ---------------------------------------------------------------- writing


def _el(indent: int, tag: str, attrs: list[tuple[str, str]], children: list[str] | None = None) -> str:
    pad = "  " * indent
    head = f"{pad}<{tag}" + "".join(f"\n{pad}    {k}={quoteattr(v)}" for k, v in attrs)
    if not children:
        return head + "/>"
    return head + ">\n" + "\n".join(children) + f"\n{pad}</{tag}>"


def _yes(b: bool) -> str:
    return "Yes" if b else "No"


def _identity(indent: int, ident: Identity) -> str:
    return _el(indent, ID_TAG_OF[ident.type], [("Value", ident.value)])


def _selector(indent: int, ts: TrafficSelector) -> str:
    fam = f"IPV{ts.version}"
    kind = ts.kind.value
    if kind == "host":
        tag, attrs = f"{fam}_Address", [("Value", str(ts.start))]
    elif kind == "subnet":
        tag, attrs = f"{fam}_Subnet", [("Value", str(ts.start)), ("NetMask", ts.address_text().split("/")[1])]
    else:
        tag, attrs = f"{fam}_Address_Range", [("From", str(ts.start)), ("To", str(ts.end))]
    if ts.protocol:
        attrs.append(("Protocol", PROTOCOL_NAMES.get(ts.protocol, str(ts.protocol))))
    if (ts.port_start, ts.port_end) != (0, 65535):
        attrs.append(("Port", str(ts.port_start) if ts.port_start == ts.port_end else f"{ts.port_start}-{ts.port_end}"))
    return _el(indent, tag, attrs)


def write_definitions(defs: Definitions) -> str:
    out: list[str] = []
    for kp in defs.km_policies:
        props = [
            _el(
                2,
                "IKETransform",
                [("IKE_Encryption", p.encr), ("IKE_KeyLength", str(p.encr_keylen))]
                + ([("IKE_Integrity", p.integ)] if p.integ else [])
                + [("IKE_PRF", p.prf), ("IKE_DHGroup", str(p.dh))],
            )
            for p in kp.proposals
        ]
        out.append(
            _el(
                1,
                "IKEProtection",
                [
                    ("IKE_ProtectionName", kp.name),
                    ("IKE_Version", str(kp.version)),
                    ("IKE_XCHGMode", kp.mode.capitalize()),
                    ("IKE_AuthenticationMethod", AUTH_OUT[kp.auth.value]),
                    ("IKE_KeyRefreshSeconds", str(kp.lifetime_s)),
                    ("IKE_KeyRefreshKB", str(kp.lifetime_kb)),
                    ("IKE_DPDDelaySeconds", str(kp.dpd_delay_s)),
                    ("IKE_DPDAction", kp.dpd_action.value),
                ],
                props,
            )
        )
    for dp in defs.dm_policies:
        if dp.protocol == "ah":
            props = [
                _el(2, "IPSecAHProtocol", [("AH_Authentication", p.integ or ""), ("AH_ExtendedSeqNum", _yes(p.esn))])
                for p in dp.proposals
            ]
        else:
            props = [
                _el(
                    2,
                    "IPSecESPProtocol",
                    [("ESP_Encryption", p.encr), ("ESP_KeyLength", str(p.encr_keylen))]
                    + ([("ESP_Authentication", p.integ)] if p.integ else [])
                    + [("ESP_ExtendedSeqNum", _yes(p.esn))],
                )
                for p in dp.proposals
            ]
        out.append(
            _el(
                1,
                "IPSecProtection",
                [
                    ("IPSec_ProtectionName", dp.name),
                    ("IPSec_EncapsulationMode", dp.mode.capitalize()),
                    ("IPSec_PFSGroup", str(dp.pfs_group) if dp.pfs_group else "none"),
                    ("IPSec_KeyRefreshSeconds", str(dp.lifetime_s)),
                    ("IPSec_KeyRefreshKB", str(dp.lifetime_kb)),
                ],
                props,
            )
        )
    for t1 in defs.phase1:
        attrs = [("IKE_TunnelName", t1.name)]
        if t1.number is not None:
            attrs.append(("IKE_TunnelNumber", str(t1.number)))
        attrs += [
            ("IKE_ProtectionRef", t1.policy),
            ("IKE_Flags_AutoStart", _yes(t1.autostart)),
            ("IKE_LocalAddress", t1.local_addr),
            ("IKE_RemoteAddress", t1.remote_addr),
        ]
        attrs = [(k, v) for k, v in attrs if v != "" or k != "IKE_LocalAddress"]
        for k, v in (
            ("IKE_CertificateFile", t1.cert_file),
            ("IKE_PrivateKeyFile", t1.key_file),
            ("IKE_CAFile", t1.ca_file),
        ):
            if v is not None:
                attrs.append((k, v))
        out.append(
            _el(
                1,
                "IKETunnel",
                attrs,
                [
                    _el(2, "IKELocalIdentity", [], [_identity(3, t1.local_id)]),
                    _el(2, "IKERemoteIdentity", [], [_identity(3, t1.remote_id)]),
                ],
            )
        )
    for t2 in defs.phase2:
        attrs = [("IPSec_TunnelName", t2.name)]
        if t2.number is not None:
            attrs.append(("IPSec_TunnelNumber", str(t2.number)))
        attrs += [
            ("IKE_TunnelName", t2.phase1),
            ("IPSec_ProtectionRef", t2.policy),
            ("IPSec_Flags_AutoStart", _yes(t2.autostart)),
        ]
        out.append(
            _el(
                1,
                "IPSecTunnel",
                attrs,
                [
                    _el(2, "IPSecLocalIdentity", [], [_selector(3, t2.local_ts)]),
                    _el(2, "IPSecRemoteIdentity", [], [_selector(3, t2.remote_ts)]),
                ],
            )
        )
    for g in defs.groups:
        out.append(
            _el(
                1,
                "IKEGroup",
                [("IKE_GroupName", g.name)],
                [_el(2, "IKEGroupMember", [("Value", m)]) for m in g.members],
            )
        )
    for psk in defs.psks:
        # ASCII when it survives an attribute unchanged, else hex, so that get -> put is exact.
        text = psk.key.decode("latin-1")
        if text.isascii() and text.isprintable() and text == text.strip() and "  " not in text:
            attrs = [("Value", text), ("Format", "ASCII")]
        else:
            attrs = [("Value", psk.key.hex()), ("Format", "Hex")]
        out.append(_el(1, "IKEPresharedKey", attrs, [_el(2, "PK_Identity", [], [_identity(3, psk.identity)])]))
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{ROOT} Version="2.0">\n' + "\n".join(out) + f"\n</{ROOT}>\n"
