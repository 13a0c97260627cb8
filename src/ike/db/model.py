"""What a put writes: definitions that refer to each other by name, as the XML does.

The read side (Store.phase1_tunnels etc.) returns the resolved dataclasses of ike.policy; the write
side takes these specs, whose references (policy, phase 1 tunnel) are names that must resolve in the
same batch or in the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.policy import DataManagementPolicy, Group, Identity, KeyManagementPolicy, TrafficSelector


class StoreError(Exception):
    """A write that cannot be done. `problems` is a list of ((kind, name), message); nothing was changed."""

    def __init__(self, problems: list[tuple[tuple[str, str], str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{kind} {name!r}: {msg}" if name else msg for (kind, name), msg in problems))


@dataclass(frozen=True)
class Phase1Spec:
    name: str
    local_id: Identity
    remote_id: Identity
    local_addr: str  # "" = any local address
    remote_addr: str
    policy: str  # KeyManagementPolicy name
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    autostart: bool = False
    number: int | None = None  # None = keep the existing number, or take the next free one


@dataclass(frozen=True)
class Phase2Spec:
    name: str
    phase1: str  # phase 1 tunnel name
    local_ts: TrafficSelector
    remote_ts: TrafficSelector
    policy: str  # DataManagementPolicy name
    autostart: bool = False
    number: int | None = None


@dataclass(frozen=True)
class PresharedKey:
    """The key shared with the peer that presents `identity` (AIX keys PSKs by the remote ID)."""

    identity: Identity
    key: bytes = field(repr=False)


@dataclass
class Definitions:
    km_policies: list[KeyManagementPolicy] = field(default_factory=list)
    dm_policies: list[DataManagementPolicy] = field(default_factory=list)
    phase1: list[Phase1Spec] = field(default_factory=list)
    phase2: list[Phase2Spec] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    psks: list[PresharedKey] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not any((self.km_policies, self.dm_policies, self.phase1, self.phase2, self.groups, self.psks))


# Entity kinds, named as the XML elements that carry them.
KM_POLICY = "IKEProtection"
DM_POLICY = "IPSecProtection"
PHASE1 = "IKETunnel"
PHASE2 = "IPSecTunnel"
GROUP = "IKEGroup"
PSK = "IKEPresharedKey"
KINDS = (KM_POLICY, DM_POLICY, PHASE1, PHASE2, GROUP, PSK)
