"""The policy model: what a tunnel definition says, shared by the database, the CLI and both engines.

Pure data with validation; it imports no crypto so that `ike cmd=list db` starts fast. Algorithm
names are the keys of `ike.proto.transforms` (checked there, lazily, by `validate_*`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyError(ValueError):
    """A definition that cannot be used; the message names the field and what to do."""


class IdType(enum.Enum):
    """Phase 1 identity types. Values are the wire numbers shared by IKEv1 (RFC 2407 §4.6.2.1) and
    IKEv2 (RFC 7296 §3.5) for these types."""

    IPV4 = 1
    FQDN = 2
    USER_FQDN = 3
    IPV6 = 5
    DN = 9
    KEY_ID = 11

    @property
    def label(self) -> str:
        return _ID_LABELS[self]

    @classmethod
    def from_label(cls, text: str) -> IdType:
        for k, v in _ID_LABELS.items():
            if v == text.lower():
                return k
        raise PolicyError(f"unknown identity type {text!r}; use one of {', '.join(_ID_LABELS.values())}")


_ID_LABELS = {
    IdType.IPV4: "ipv4",
    IdType.FQDN: "fqdn",
    IdType.USER_FQDN: "user_fqdn",
    IdType.IPV6: "ipv6",
    IdType.DN: "dn",
    IdType.KEY_ID: "key_id",
}


@dataclass(frozen=True)
class Identity:
    """A phase 1 identity. `value` is the text form: an address, a host name, user@host, or an
    X.500 DN in RFC 4514 text ("CN=gw1,O=Example")."""

    type: IdType
    value: str

    @classmethod
    def parse(cls, text: str, type_label: str | None = None) -> Identity:
        """Guess the type as AIX does when none is given: address, user FQDN (has @), DN (has =),
        otherwise FQDN."""
        text = text.strip()
        if not text:
            raise PolicyError("empty identity")
        if type_label:
            t = IdType.from_label(type_label)
            ident = cls(t, text)
            ident.check()
            return ident
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.IPV4 if addr.version == 4 else IdType.IPV6, str(addr))
        if "=" in text:
            return cls(IdType.DN, text)
        if "@" in text:
            return cls(IdType.USER_FQDN, text)
        return cls(IdType.FQDN, text)

    def check(self) -> None:
        if self.type in (IdType.IPV4, IdType.IPV6):
            try:
                addr = ipaddress.ip_address(self.value)
            except ValueError:
                raise PolicyError(f"identity {self.value!r} is not an IP address") from None
            if (addr.version == 4) != (self.type is IdType.IPV4):
                raise PolicyError(f"identity {self.value!r} does not match type {self.type.label}")
        elif self.type is IdType.USER_FQDN and "@" not in self.value:
            raise PolicyError(f"user FQDN identity {self.value!r} needs the form user@domain")
        elif self.type is IdType.DN and "=" not in self.value:
            raise PolicyError(f"DN identity {self.value!r} needs the form CN=...,O=...")

    def __str__(self) -> str:
        return self.value


class SelectorKind(enum.Enum):
    HOST = "host"
    SUBNET = "subnet"
    RANGE = "range"


@dataclass(frozen=True)
class TrafficSelector:
    """A phase 2 identity: an address range (a host and a subnet are ranges too) with an optional
    IP protocol (0 = any) and port range (0-65535 = any)."""

    start: IPAddress
    end: IPAddress
    protocol: int = 0
    port_start: int = 0
    port_end: int = 65535

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise PolicyError(f"selector {self.start}-{self.end} mixes IPv4 and IPv6")
        if int(self.start) > int(self.end):
            raise PolicyError(f"selector range {self.start}-{self.end} is reversed")
        if not 0 <= self.protocol <= 255:
            raise PolicyError(f"IP protocol {self.protocol} is outside 0-255")
        if not (0 <= self.port_start <= self.port_end <= 65535):
            raise PolicyError(f"port range {self.port_start}-{self.port_end} is not within 0-65535")

    @property
    def version(self) -> int:
        return self.start.version

    @classmethod
    def host(cls, addr: str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        a = ipaddress.ip_address(addr)
        return cls(a, a, protocol, *_ports(port))

    @classmethod
    def subnet(cls, net: str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        n = ipaddress.ip_network(net, strict=False)
        return cls(n.network_address, n.broadcast_address, protocol, *_ports(port))

    @classmethod
    def range(cls, start: str, end: str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        return cls(ipaddress.ip_address(start), ipaddress.ip_address(end), protocol, *_ports(port))

    @classmethod
    def parse(cls, text: str, protocol: int = 0, port: int = 0) -> TrafficSelector:
        """Forms: `addr`, `addr/prefix`, `addr,mask` (AIX subnet id), `start-end` or `start,end` (range)."""
        text = text.strip()
        try:
            if "/" in text:
                return cls.subnet(text, protocol, port)
            if "-" in text and not _is_ip(text):
                a, b = text.split("-", 1)
                return cls.range(a.strip(), b.strip(), protocol, port)
            if "," in text:
                a, b = (p.strip() for p in text.split(",", 1))
                second = ipaddress.ip_address(b)
                if _looks_like_mask(second):
                    return cls.subnet(f"{a}/{b}", protocol, port)
                return cls.range(a, b, protocol, port)
            return cls.host(text, protocol, port)
        except ValueError as e:
            if isinstance(e, PolicyError):
                raise
            raise PolicyError(f"{text!r} is not an address, subnet (a/len or a,mask) or range (a-b): {e}") from None

    @property
    def kind(self) -> SelectorKind:
        if self.start == self.end:
            return SelectorKind.HOST
        size = int(self.end) - int(self.start) + 1
        if size & (size - 1) == 0 and int(self.start) % size == 0:
            return SelectorKind.SUBNET
        return SelectorKind.RANGE

    def address_text(self) -> str:
        k = self.kind
        if k is SelectorKind.HOST:
            return str(self.start)
        if k is SelectorKind.SUBNET:
            bits = self.start.max_prefixlen - (int(self.end) - int(self.start) + 1).bit_length() + 1
            return f"{self.start}/{bits}"
        return f"{self.start}-{self.end}"

    def __str__(self) -> str:
        s = self.address_text()
        if self.protocol:
            s += f" proto {self.protocol}"
        if (self.port_start, self.port_end) != (0, 65535):
            s += f" port {self.port_start}" + (f"-{self.port_end}" if self.port_end != self.port_start else "")
        return s

    def contains(self, other: TrafficSelector) -> bool:
        return (
            self.version == other.version
            and int(self.start) <= int(other.start)
            and int(other.end) <= int(self.end)
            and (self.protocol == 0 or self.protocol == other.protocol)
            and self.port_start <= other.port_start
            and other.port_end <= self.port_end
        )

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The narrowed selector both sides accept (RFC 7296 §2.9), or None."""
        if self.version != other.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        lo = max(int(self.start), int(other.start))
        hi = min(int(self.end), int(other.end))
        plo = max(self.port_start, other.port_start)
        phi = min(self.port_end, other.port_end)
        if lo > hi or plo > phi:
            return None
        fam = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return TrafficSelector(fam(lo), fam(hi), self.protocol or other.protocol, plo, phi)


def _ports(port: int) -> tuple[int, int]:
    return (port, port) if port else (0, 65535)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _looks_like_mask(addr: IPAddress) -> bool:
    n = int(addr)
    bits = addr.max_prefixlen
    inv = ((1 << bits) - 1) ^ n
    return n != 0 and inv & (inv + 1) == 0


class AuthMethod(enum.Enum):
    PSK = "psk"
    RSA = "rsa"
    ECDSA = "ecdsa"
    ED25519 = "ed25519"


@dataclass(frozen=True)
class IkeProposal:
    """One phase 1 proposal. `integ` is None for AEAD ciphers (IKEv2 only)."""

    encr: str
    encr_keylen: int
    integ: str | None
    prf: str
    dh: int

    def __str__(self) -> str:
        parts = [f"{self.encr}-{self.encr_keylen}"]
        if self.integ:
            parts.append(self.integ)
        parts += [f"prf-{self.prf}", f"dh{self.dh}"]
        return "/".join(parts)


@dataclass(frozen=True)
class EspProposal:
    """One phase 2 proposal. `integ` is None for AEAD ciphers."""

    encr: str
    encr_keylen: int
    integ: str | None
    esn: bool = False

    def __str__(self) -> str:
        parts = [f"{self.encr}-{self.encr_keylen}"]
        if self.integ:
            parts.append(self.integ)
        if self.esn:
            parts.append("esn")
        return "/".join(parts)


class DpdAction(enum.Enum):
    CLEAR = "clear"
    RESTART = "restart"
    HOLD = "hold"


@dataclass(frozen=True)
class KeyManagementPolicy:
    """Phase 1 (IKE/ISAKMP SA) policy."""

    name: str
    version: int = 2
    mode: str = "main"  # IKEv1 exchange mode: main | aggressive
    proposals: tuple[IkeProposal, ...] = ()
    lifetime_s: int = 28800
    lifetime_kb: int = 0  # IKEv1 only; 0 = no limit
    auth: AuthMethod = AuthMethod.PSK
    dpd_delay_s: int = 30  # 0 disables liveness checks
    dpd_action: DpdAction = DpdAction.CLEAR

    def check(self) -> None:
        if self.version not in (1, 2):
            raise PolicyError(f"policy {self.name}: IKE version must be 1 or 2, not {self.version}")
        if self.mode not in ("main", "aggressive"):
            raise PolicyError(f"policy {self.name}: mode must be main or aggressive, not {self.mode!r}")
        if not self.proposals:
            raise PolicyError(f"policy {self.name}: needs at least one proposal")
        if self.lifetime_s <= 0 or self.lifetime_kb < 0:
            raise PolicyError(f"policy {self.name}: lifetimes must be positive")


@dataclass(frozen=True)
class DataManagementPolicy:
    """Phase 2 (IPsec SA) policy."""

    name: str
    protocol: str = "esp"  # esp | ah
    proposals: tuple[EspProposal, ...] = ()
    pfs_group: int = 0  # 0 = no PFS
    lifetime_s: int = 3600
    lifetime_kb: int = 0  # 0 = no limit
    mode: str = "tunnel"  # tunnel | transport

    def check(self) -> None:
        if self.protocol not in ("esp", "ah"):
            raise PolicyError(f"policy {self.name}: protocol must be esp or ah, not {self.protocol!r}")
        if self.mode not in ("tunnel", "transport"):
            raise PolicyError(f"policy {self.name}: mode must be tunnel or transport, not {self.mode!r}")
        if not self.proposals:
            raise PolicyError(f"policy {self.name}: needs at least one proposal")
        if self.lifetime_s <= 0 or self.lifetime_kb < 0:
            raise PolicyError(f"policy {self.name}: lifetimes must be positive")


@dataclass(frozen=True)
class Credentials:
    """How this end proves itself and checks the peer: a pre-shared key, or a certificate with its
    private key file and the CA certificate that peers' certificates must chain to."""

    psk: bytes | None = field(default=None, repr=False)
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class Phase1Tunnel:
    number: int
    name: str
    local_id: Identity
    remote_id: Identity
    local_addr: str
    remote_addr: str
    policy: KeyManagementPolicy
    credentials: Credentials = Credentials()
    autostart: bool = False


@dataclass(frozen=True)
class Phase2Tunnel:
    number: int
    name: str
    phase1: int  # number of the phase 1 tunnel it runs under
    local_ts: TrafficSelector
    remote_ts: TrafficSelector
    policy: DataManagementPolicy
    autostart: bool = False


@dataclass(frozen=True)
class Group:
    """A named group of remote identities; `remid=<group>` starts one tunnel per member."""

    name: str
    members: tuple[str, ...] = ()
