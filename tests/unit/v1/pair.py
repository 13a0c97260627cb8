"""Two IKEv1 engines wired together in memory with a fake clock (the aioquic testing pattern).

`Pair.run()` moves datagrams between the engines until nothing is left to send, advancing the clock
to the next timer when the wire is quiet. A `drop` predicate loses chosen datagrams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ike.policy import (
    AuthMethod,
    Credentials,
    DataManagementPolicy,
    EspProposal,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)
from ike.proto.api import (
    ChildSaEstablished,
    Datagram,
    EngineSettings,
    Event,
    IkeSaEstablished,
    PacketDropped,
    SpiAdded,
)
from ike.proto.static_policies import StaticPolicies
from ike.proto.v1 import Ikev1Engine, demux

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
PSK = b"correct horse battery staple"

IKE_DEFAULT = (IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 14),)
ESP_DEFAULT = (EspProposal("aes-cbc", 128, "hmac-sha1-96"),)


def phase1(
    local_ip: str,
    remote_ip: str,
    *,
    mode: str = "main",
    auth: AuthMethod = AuthMethod.PSK,
    proposals: tuple[IkeProposal, ...] = IKE_DEFAULT,
    psk: bytes = PSK,
    lifetime_s: int = 28800,
    lifetime_kb: int = 0,
    dpd: int = 30,
    creds: Credentials | None = None,
    local_id: Identity | None = None,
    remote_id: Identity | None = None,
    number: int = 1,
) -> Phase1Tunnel:
    pol = KeyManagementPolicy(
        f"p1pol{number}", version=1, mode=mode, proposals=proposals, lifetime_s=lifetime_s,
        lifetime_kb=lifetime_kb, auth=auth, dpd_delay_s=dpd,
    )  # fmt: skip
    return Phase1Tunnel(
        number,
        f"t{number}",
        local_id or Identity.parse(local_ip),
        remote_id or Identity.parse(remote_ip),
        local_ip,
        remote_ip,
        pol,
        creds or Credentials(psk=psk),
    )


def phase2(
    p1: Phase1Tunnel,
    local: str,
    remote: str,
    *,
    number: int = 1,
    proposals: tuple[EspProposal, ...] = ESP_DEFAULT,
    pfs: int = 0,
    lifetime_s: int = 3600,
    lifetime_kb: int = 0,
    mode: str = "tunnel",
    protocol: str = "esp",
) -> Phase2Tunnel:
    pol = DataManagementPolicy(
        f"p2pol{number}", protocol=protocol, proposals=proposals, pfs_group=pfs, lifetime_s=lifetime_s,
        lifetime_kb=lifetime_kb, mode=mode,
    )  # fmt: skip
    return Phase2Tunnel(
        number, f"c{number}", p1.number, TrafficSelector.parse(local), TrafficSelector.parse(remote), pol
    )


def mirror(p2: Phase2Tunnel, p1: Phase1Tunnel) -> Phase2Tunnel:
    return replace(p2, phase1=p1.number, local_ts=p2.remote_ts, remote_ts=p2.local_ts)


class Pair:
    """Initiator `a` (198.18.0.1) and responder `b` (198.18.0.2), created on the first message."""

    def __init__(
        self,
        a_p1: Phase1Tunnel,
        a_children: Sequence[Phase2Tunnel],
        b_policies: StaticPolicies,
        *,
        a_policies: StaticPolicies | None = None,
        settings: EngineSettings | None = None,
        b_settings: EngineSettings | None = None,
        nat: bool = False,
        start: bool = True,
    ) -> None:
        self.now = 1000.0
        self.settings = settings or EngineSettings()
        self.b_settings = b_settings or self.settings
        self.b_policies = b_policies
        self.a_events: list[Event] = []
        self.b_events: list[Event] = []
        self.wire: list[tuple[str, Datagram]] = []  # (to, datagram) in flight
        self.log: list[tuple[str, Datagram]] = []  # everything sent, for inspection
        self.drop: Callable[[int, str, Datagram], bool] = lambda i, to, dg: False
        self.sent = 0
        self.nat = nat  # a NAT in front of `a` maps 198.18.0.1 -> 198.18.1.1 with other ports
        self.bs: list[Ikev1Engine] = []  # responder engines, one per negotiation the peer started
        self.routes: dict[bytes, Ikev1Engine] = {}  # b's cookies (SpiAdded) -> engine, as the daemon does
        self.half_open: dict[bytes, Ikev1Engine] = {}  # by the initiator's cookie
        self.a = Ikev1Engine.initiate(
            a_p1, a_children, a_policies or StaticPolicies([a_p1]), self.settings, (A_IP, 500), (B_IP, 500), self.now
        )
        self.collect()

    # --- moving things around ---------------------------------------------------------------------

    def _nat_out(self, dg: Datagram) -> Datagram:
        if not self.nat:
            return dg
        port = 40500 if dg.local[1] == 500 else 44500
        return Datagram(dg.data, (dg.remote[0], dg.remote[1]), ("198.18.1.1", port))

    def _nat_in(self, dg: Datagram) -> Datagram:
        if not self.nat:
            return dg
        port = 500 if dg.remote[1] == 40500 else 4500
        return Datagram(dg.data, (A_IP, port), dg.local)

    def collect(self) -> None:
        for dg in self.a.datagrams_to_send():
            self._put("b", self._nat_out(dg))
        while (ev := self.a.next_event()) is not None:
            self.a_events.append(ev)
        for b in self.bs:
            for dg in b.datagrams_to_send():
                # what b sends travels to a through the NAT (reverse mapping)
                if self.nat:
                    dg = Datagram(dg.data, (A_IP, 500 if dg.remote[1] == 40500 else 4500), dg.local)
                    self._put("a", dg)
                else:
                    self._put("a", Datagram(dg.data, dg.remote, dg.local))
            while (ev := b.next_event()) is not None:
                self.b_events.append(ev)
                if isinstance(ev, SpiAdded):
                    self.routes[ev.spi] = b

    def _put(self, to: str, dg: Datagram) -> None:
        i = self.sent
        self.sent += 1
        self.log.append((to, dg))
        if not self.drop(i, to, dg):
            self.wire.append((to, dg))

    def deliver_one(self) -> None:
        to, dg = self.wire.pop(0)
        if to == "b":
            # as b sees it: local = b's address, remote = a's (or the NAT's) address
            rx = Datagram(dg.data, dg.local if self.nat else dg.remote, dg.remote if self.nat else dg.local)
            rx = Datagram(dg.data, (B_IP, rx.local[1]), rx.remote)
            d = demux(dg.data)
            assert d is not None
            eng = (self.routes.get(d.our_spi) if d.our_spi else None) or self.routes.get(d.peer_spi)
            if eng is None and d.our_spi is None:
                eng = self.half_open.get(d.peer_spi)
            if eng is None:
                new = Ikev1Engine.respond(rx, self.b_policies, self.b_settings, self.now)
                if new is not None:
                    self.bs.append(new)
                    self.half_open[d.peer_spi] = new
            else:
                eng.receive_datagram(rx, self.now)
        else:
            self.a.receive_datagram(dg, self.now)
        self.collect()

    def run(self, until: float | None = None, max_steps: int = 10000) -> None:
        """Deliver everything; when idle, jump to the earliest timer (up to `until`)."""
        for _ in range(max_steps):
            if self.wire:
                self.deliver_one()
                continue
            timers = [t for t in [self.a.get_timer(), *(b.get_timer() for b in self.bs)] if t is not None]
            if not timers or until is None:
                return
            t = min(timers)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            self.a.handle_timer(self.now)
            for b in self.bs:
                b.handle_timer(self.now)
            self.collect()
        raise AssertionError("did not settle")

    @property
    def b(self) -> Ikev1Engine | None:
        return self.bs[-1] if self.bs else None

    def forget_b(self) -> None:
        """The peer restarts and loses all state."""
        self.bs.clear()
        self.routes.clear()
        self.half_open.clear()

    def advance(self, seconds: float) -> None:
        self.run(until=self.now + seconds)

    # --- looking at results -----------------------------------------------------------------------

    def events(self, side: str, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in (self.a_events if side == "a" else self.b_events) if isinstance(e, cls)]

    def established(self) -> tuple[list[IkeSaEstablished], list[IkeSaEstablished]]:
        return self.events("a", IkeSaEstablished), self.events("b", IkeSaEstablished)

    def children(self) -> tuple[list[ChildSaEstablished], list[ChildSaEstablished]]:
        return self.events("a", ChildSaEstablished), self.events("b", ChildSaEstablished)

    def dropped(self) -> list[PacketDropped]:
        return self.events("a", PacketDropped) + self.events("b", PacketDropped)


def policies_b(p1: Phase1Tunnel, *p2s: Phase2Tunnel) -> StaticPolicies:
    return StaticPolicies([p1], list(p2s))


def basic(
    mode: str = "main", pfs: int = 0, esp: tuple[EspProposal, ...] = ESP_DEFAULT, **kw: object
) -> tuple[Phase1Tunnel, Phase2Tunnel, Phase1Tunnel, Phase2Tunnel]:
    a1 = phase1(A_IP, B_IP, mode=mode, **kw)  # type: ignore[arg-type]
    b1 = phase1(B_IP, A_IP, mode=mode, **kw)  # type: ignore[arg-type]
    a2 = phase2(a1, "10.1.0.0/16", "10.2.0.0/16", pfs=pfs, proposals=esp)
    b2 = mirror(a2, b1)
    return a1, a2, b1, b2
