"""Two IKEv2 engines talking in memory, with a fake clock, an optional lossy wire and an optional NAT.

`Net` plays the daemon's part: it routes datagrams by `demux` (our SPI, or the peer's for a first
IKE_SA_INIT), creates the responder engine with `Ikev2Engine.respond`, drives the timers and
collects every event per side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ike.policy import (
    AuthMethod,
    Credentials,
    DataManagementPolicy,
    DpdAction,
    EspProposal,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)
from ike.proto.api import Datagram, EngineSettings, Event, PacketDropped
from ike.proto.static_policies import StaticPolicies
from ike.proto.v2 import CookieGuard, Ikev2Engine, StatelessOutput, demux

I_IP = "198.18.0.1"
R_IP = "198.18.0.2"
NAT_IP = "198.18.0.100"


GCM = IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31)
ESP_GCM = EspProposal("aes-gcm-16", 256, None)


def phase1(
    number: int = 1,
    local_id: str = I_IP,
    remote_id: str = R_IP,
    local_addr: str = I_IP,
    remote_addr: str = R_IP,
    proposals: tuple[IkeProposal, ...] = (GCM,),
    auth: AuthMethod = AuthMethod.PSK,
    psk: bytes | None = b"correct horse battery staple",
    cert_file: str | None = None,
    key_file: str | None = None,
    ca_file: str | None = None,
    lifetime_s: int = 28800,
    dpd_delay_s: int = 30,
    dpd_action: DpdAction = DpdAction.CLEAR,
    name: str = "p1",
) -> Phase1Tunnel:
    pol = KeyManagementPolicy(f"{name}-pol", 2, "main", proposals, lifetime_s, 0, auth, dpd_delay_s, dpd_action)
    return Phase1Tunnel(
        number,
        name,
        Identity.parse(local_id),
        Identity.parse(remote_id),
        local_addr,
        remote_addr,
        pol,
        Credentials(psk=psk, cert_file=cert_file, key_file=key_file, ca_file=ca_file),
    )


def phase2(
    number: int = 1,
    phase1_number: int = 1,
    local: str = "198.18.10.0/24",
    remote: str = "198.18.20.0/24",
    proposals: tuple[EspProposal, ...] = (ESP_GCM,),
    pfs_group: int = 0,
    mode: str = "tunnel",
    lifetime_s: int = 3600,
    protocol: str = "esp",
    name: str = "p2",
) -> Phase2Tunnel:
    pol = DataManagementPolicy(f"{name}-pol", protocol, proposals, pfs_group, lifetime_s, 0, mode)
    return Phase2Tunnel(number, name, phase1_number, TrafficSelector.parse(local), TrafficSelector.parse(remote), pol)


def mirror1(p: Phase1Tunnel, **kw: object) -> Phase1Tunnel:
    """The peer's view of a phase 1 definition (`kw` overrides fields of the mirrored one)."""
    base: dict[str, object] = {
        "local_id": p.remote_id,
        "remote_id": p.local_id,
        "local_addr": p.remote_addr,
        "remote_addr": p.local_addr,
    }
    base.update(kw)
    return replace(p, **base)  # type: ignore[arg-type]


def mirror2(p: Phase2Tunnel, **kw: object) -> Phase2Tunnel:
    base: dict[str, object] = {"local_ts": p.remote_ts, "remote_ts": p.local_ts}
    base.update(kw)
    return replace(p, **base)  # type: ignore[arg-type]


@dataclass
class Side:
    name: str
    engine: Ikev2Engine | None = None
    events: list[Event] = field(default_factory=list)

    def of(self, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, cls)]


class Net:
    def __init__(
        self,
        i_phase1: Phase1Tunnel,
        i_children: Sequence[Phase2Tunnel],
        i_policies: StaticPolicies,
        r_policies: StaticPolicies,
        settings: EngineSettings | None = None,
        r_settings: EngineSettings | None = None,
        drop: Callable[[int, Datagram], bool] | None = None,
        nat: bool = False,
        start: float = 1000.0,
        addresses: tuple[str, str] = (I_IP, R_IP),
    ) -> None:
        self.now = start
        self.settings = settings or EngineSettings(extra={"ikev2_cookie_guard": CookieGuard()})
        self.r_settings = r_settings or self.settings
        self.r_policies = r_policies
        self.drop = drop
        self.nat = nat
        self.sent = 0
        self.wire: list[tuple[str, Datagram]] = []
        self.stateless = StatelessOutput()
        self.i = Side("i")
        self.r = Side("r")
        self.i.engine = Ikev2Engine.initiate(
            i_phase1, i_children, i_policies, self.settings, (addresses[0], 500), (addresses[1], 500), self.now
        )
        self._collect()

    # NAT: the initiator's (I_IP, port) appears as (NAT_IP, port + 10000) to the responder.
    def _to_r(self, dg: Datagram) -> Datagram:
        src = (NAT_IP, dg.local[1] + 10000) if self.nat else dg.local
        return Datagram(dg.data, dg.remote, src)

    def _to_i(self, dg: Datagram) -> Datagram:
        dst = (I_IP, dg.remote[1] - 10000) if self.nat else dg.remote
        return Datagram(dg.data, dst, dg.local)

    def _collect(self) -> None:
        for side in (self.i, self.r):
            if side.engine is not None:
                while (ev := side.engine.next_event()) is not None:
                    side.events.append(ev)

    def _lost(self, dg: Datagram) -> bool:
        self.sent += 1
        return self.drop is not None and self.drop(self.sent, dg)

    def pump(self, limit: int = 10000) -> int:
        """Deliver datagrams until both sides are quiet; returns how many were delivered."""
        delivered = 0
        for _ in range(limit):
            moved = False
            if self.i.engine is not None:
                for dg in self.i.engine.datagrams_to_send():
                    moved = True
                    self.wire.append(("i", dg))
                    if not self._lost(dg):
                        self.deliver_to_r(self._to_r(dg))
                        delivered += 1
            if self.r.engine is not None:
                for dg in self.r.engine.datagrams_to_send():
                    moved = True
                    self.wire.append(("r", dg))
                    if not self._lost(dg):
                        self.deliver_to_i(self._to_i(dg))
                        delivered += 1
            for dg in self.stateless.datagrams:
                moved = True
                self.wire.append(("r", dg))
                if not self._lost(dg):
                    self.deliver_to_i(self._to_i(dg))
                    delivered += 1
            self.stateless.datagrams.clear()
            self._collect()
            if not moved:
                break
        return delivered

    def deliver_to_r(self, dg: Datagram) -> None:
        d = demux(dg.data)
        eng = self.r.engine
        if d is not None and d.our_spi is None:
            # A first IKE_SA_INIT, or a retransmission of the one the engine answered.
            if eng is not None and eng.sa is not None and eng.sa.spi_i == d.peer_spi:
                eng.receive_datagram(dg, self.now)
            else:
                self._respond(dg)
            return
        if eng is None:
            self._respond(dg)
            return
        eng.receive_datagram(dg, self.now)

    def _respond(self, dg: Datagram) -> None:
        eng = Ikev2Engine.respond(dg, self.r_policies, self.r_settings, self.now, self.stateless)
        self.r.events += self.stateless.events
        self.stateless.events.clear()
        if eng is not None:
            self.r.engine = eng

    def deliver_to_i(self, dg: Datagram) -> None:
        assert self.i.engine is not None
        self.i.engine.receive_datagram(dg, self.now)

    def next_timer(self) -> float | None:
        ts = [e.engine.get_timer() for e in (self.i, self.r) if e.engine is not None]
        ts2 = [t for t in ts if t is not None]
        return min(ts2) if ts2 else None

    def run(self, seconds: float) -> None:
        """Pump, then fire timers in order up to now + seconds."""
        end = self.now + seconds
        self.pump()
        while True:
            t = self.next_timer()
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            for side in (self.i, self.r):
                if side.engine is not None:
                    side.engine.handle_timer(self.now)
            self._collect()
            self.pump()
        self.now = end

    def drops(self, side: Side) -> list[str]:
        return [e.reason for e in side.events if isinstance(e, PacketDropped)]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)
