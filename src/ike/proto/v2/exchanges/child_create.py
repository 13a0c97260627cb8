"""CHILD SA negotiation (RFC 7296 §1.3.1, §2.9, §2.17): the exchange CREATE_CHILD_SA for a new child,
and the SA/TS/mode logic IKE_AUTH (first child) and child_rekey.py reuse.

    initiator  HDR, SK {[N(USE_TRANSPORT_MODE)], SA, Ni, [KEi], TSi, TSr}  -->
               <--  HDR, SK {[N(USE_TRANSPORT_MODE)], SA, Nr, [KEr], TSi, TSr}

Traffic selectors are narrowed by the responder to the intersection with its definition (§2.9);
the initiator accepts only a subset of what it proposed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ike.policy import Phase2Tunnel, TrafficSelector
from ike.proto.crypto import CryptoError, DhPrivate
from ike.proto.v2 import proposals as props
from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.keys import derive_child_keys
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.header import CREATE_CHILD_SA
from ike.proto.v2.payloads.ke import KePayload
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.payloads.nonce import NoncePayload
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.payloads.sa import PROTO_AH, PROTO_ESP, SaPayload
from ike.proto.v2.payloads.ts import TsiPayload, TsrPayload
from ike.proto.v2.state import ChildSa, IkeSa

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine

NONCE_LEN = 32


def proto_number(phase2: Phase2Tunnel) -> int:
    return PROTO_AH if phase2.policy.protocol == "ah" else PROTO_ESP


def describe_ts(tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]) -> tuple[str, ...]:
    return ("TSi " + ", ".join(map(str, tsi)), "TSr " + ", ".join(map(str, tsr)))


@dataclass
class ChildOffer:
    """What we proposed as initiator of a child SA."""

    phase2: Phase2Tunnel
    spi_in: bytes
    pfs_group: int
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    ni: bytes = b""
    dh: DhPrivate | None = None

    @classmethod
    def make(
        cls,
        eng: Ikev2Engine,
        phase2: Phase2Tunnel,
        pfs_group: int,
        with_nonce: bool,
        local_ts: tuple[TrafficSelector, ...] | None = None,
        remote_ts: tuple[TrafficSelector, ...] | None = None,
    ) -> ChildOffer:
        return cls(
            phase2,
            eng.alloc_child_spi(),
            pfs_group,
            local_ts or (phase2.local_ts,),
            remote_ts or (phase2.remote_ts,),
            os.urandom(NONCE_LEN) if with_nonce else b"",
            DhPrivate(pfs_group) if pfs_group and with_nonce else None,
        )

    def payloads(self) -> list[Payload]:
        pol = self.phase2.policy
        proto = proto_number(self.phase2)
        out: list[Payload] = []
        if pol.mode == "transport":
            out.append(NotifyPayload(notify_type=n.USE_TRANSPORT_MODE))
        out.append(
            SaPayload(
                proposals=[
                    props.esp_to_wire(p, i + 1, self.spi_in, self.pfs_group, proto) for i, p in enumerate(pol.proposals)
                ]
            )
        )
        if self.ni:
            out.append(NoncePayload(data=self.ni))
        if self.dh is not None:
            out.append(KePayload(group=self.dh.group, data=self.dh.public))
        out += [TsiPayload(selectors=list(self.local_ts)), TsrPayload(selectors=list(self.remote_ts))]
        return out

    def offered(self) -> tuple[str, ...]:
        return props.describe_esp(self.phase2.policy.proposals, self.pfs_group) + describe_ts(
            self.local_ts, self.remote_ts
        )


def lifetimes(eng: Ikev2Engine, phase2: Phase2Tunnel, we_initiated: bool, now: float) -> tuple[float | None, float]:
    life = float(phase2.policy.lifetime_s)
    margin = eng.settings.rekey_margin if we_initiated else eng.settings.rekey_margin / 2
    return now + life * (1 - margin), now + life


def _refused(eng: Ikev2Engine, sa: IkeSa, offer: ChildOffer, proto: int, now: float) -> None:
    """The peer answered with a child SA we cannot take: it has installed it, so delete it there."""
    from ike.proto.v2.exchanges.delete import DeleteRefused

    eng.queue(sa, DeleteRefused(proto, offer.spi_in), now)


def process_response(
    eng: Ikev2Engine,
    sa: IkeSa,
    msg: Message,
    offer: ChildOffer,
    ni: bytes,
    nr: bytes,
    now: float,
    rekey_of: int | None = None,
) -> ChildSa | None:
    """Initiator: check the responder's choice for `offer` and install the child SA."""
    p2 = offer.phase2
    sap, tsi, tsr = msg.get(SaPayload), msg.get(TsiPayload), msg.get(TsrPayload)
    if sap is None or tsi is None or tsr is None:
        err = msg.error_notify()
        what = n.notify_name(err.notify_type) if err else "a response without SA and TS payloads"
        eng.fail(
            sa,
            2,
            f"peer refused child SA {p2.name}: {what}",
            phase2=p2,
            rekey_of=rekey_of,
            offered=offer.offered(),
            notify=n.notify_name(err.notify_type) if err else None,
        )
        return None
    proto = proto_number(p2)
    chosen = props.selected_esp(p2.policy.proposals, offer.pfs_group, sap.proposals, proto)
    if chosen is None:
        eng.fail(
            sa,
            2,
            f"peer chose a proposal for child SA {p2.name} that we did not offer",
            phase2=p2,
            rekey_of=rekey_of,
            offered=offer.offered(),
            peer_offered=props.describe(sap.proposals),
            notify="NO_PROPOSAL_CHOSEN",
        )
        _refused(eng, sa, offer, proto, now)
        return None
    g_ir = b""
    if offer.dh is not None:
        ke = msg.get(KePayload)
        if ke is None or ke.group != offer.dh.group:
            eng.fail(
                sa,
                2,
                f"peer's response for child SA {p2.name} lacks a KE payload of PFS group {offer.dh.group}",
                phase2=p2,
                rekey_of=rekey_of,
                offered=offer.offered(),
            )
            _refused(eng, sa, offer, proto, now)
            return None
        try:
            g_ir = offer.dh.shared(ke.data)
        except CryptoError as e:
            eng.fail(sa, 2, f"peer's PFS key exchange value is invalid: {e}", phase2=p2, rekey_of=rekey_of)
            _refused(eng, sa, offer, proto, now)
            return None
    bad = [t for t in tsi.selectors if not any(o.contains(t) for o in offer.local_ts)]
    bad += [t for t in tsr.selectors if not any(o.contains(t) for o in offer.remote_ts)]
    if bad:
        eng.fail(
            sa,
            2,
            f"peer's selectors for child SA {p2.name} are not within what we proposed ({', '.join(map(str, bad))})",
            phase2=p2,
            rekey_of=rekey_of,
            offered=describe_ts(offer.local_ts, offer.remote_ts),
            peer_offered=describe_ts(tsi.selectors, tsr.selectors),
            notify="TS_UNACCEPTABLE",
        )
        _refused(eng, sa, offer, proto, now)
        return None
    # Transport only when we asked and the responder agreed (it may not impose it).
    transport = p2.policy.mode == "transport" and msg.notify(n.USE_TRANSPORT_MODE) is not None
    if p2.policy.mode == "transport" and not transport:
        eng.fail(
            sa,
            2,
            f"peer did not accept transport mode for child SA {p2.name}",
            phase2=p2,
            rekey_of=rekey_of,
            offered=("mode transport",),
            peer_offered=("mode tunnel",),
        )
        _refused(eng, sa, offer, proto, now)
        return None
    if eng.deleted_early(sap.proposals[0].spi):
        eng.stats["children deleted by the peer before they were up"] += 1
        eng.release_child_spi(offer.spi_in)
        return None
    keys = derive_child_keys(
        sa.proposal.prf if sa.proposal else "",
        sa.keys.sk_d if sa.keys else b"",
        chosen,
        ni,
        nr,
        g_ir,
        ah=proto == PROTO_AH,
    )
    rekey_at, expire_at = lifetimes(eng, p2, True, now)
    child = ChildSa(
        child_id=eng.new_child_id(),
        phase2=p2,
        proposal=chosen,
        protocol=p2.policy.protocol,
        mode="transport" if transport else "tunnel",
        spi_in=offer.spi_in,
        spi_out=sap.proposals[0].spi,
        keys=keys,
        we_initiated=True,
        local_ts=tuple(tsi.selectors),
        remote_ts=tuple(tsr.selectors),
        pfs_group=offer.pfs_group,
        created=now,
        rekey_at=rekey_at,
        expire_at=expire_at,
        nonces=(ni, nr),
        rekey_of=rekey_of,
    )
    eng.add_child(sa, child, now)
    return child


def narrow(ours: TrafficSelector, theirs: Sequence[TrafficSelector]) -> list[TrafficSelector]:
    if len(theirs) == 1:  # the usual request: one selector, nothing to merge
        t = theirs[0]
        x = t if ours.contains(t) else ours.intersect(t)
        return [] if x is None else [x]
    out: list[TrafficSelector] = []
    for t in theirs:
        x = t if ours.contains(t) else ours.intersect(t)  # the common case needs no new selector
        if x is not None and not any(o.contains(x) for o in out):
            out = [o for o in out if not x.contains(o)] + [x]
    return out


def negotiate_r(
    eng: Ikev2Engine,
    sa: IkeSa,
    msg: Message,
    ni: bytes,
    nr: bytes,
    now: float,
    *,
    in_ike_auth: bool,
    rekey: ChildSa | None = None,
) -> tuple[list[Payload], ChildSa | None]:
    """Responder: pick the definition, proposal, selectors and mode for a requested child SA.
    Returns the response payloads (with Nr when not in IKE_AUTH) and the child, not yet installed."""
    sap, tsi, tsr = msg.get(SaPayload), msg.get(TsiPayload), msg.get(TsrPayload)
    if sap is None or tsi is None or tsr is None:
        if in_ike_auth and sap is None and tsi is None and tsr is None:
            return [], None  # childless IKE_AUTH (RFC 6023)
        return [NotifyPayload(notify_type=n.INVALID_SYNTAX)], None

    def peer_ts() -> tuple[str, ...]:  # only built for a failure report
        return describe_ts(tsi.selectors, tsr.selectors)

    assert sa.phase1 is not None
    p2 = rekey.phase2 if rekey is not None else eng.policies.phase2_for(sa.phase1, tsr.selectors, tsi.selectors)
    if p2 is None:
        eng.fail(
            sa,
            2,
            f"no phase 2 definition under {sa.phase1.name} matches the peer's selectors",
            peer_offered=peer_ts(),
            notify="TS_UNACCEPTABLE",
        )
        return [NotifyPayload(notify_type=n.TS_UNACCEPTABLE)], None
    local = narrow(p2.local_ts, tsr.selectors)
    remote = narrow(p2.remote_ts, tsi.selectors)
    if not local or not remote:
        eng.fail(
            sa,
            2,
            f"peer's selectors do not overlap those of {p2.name}",
            phase2=p2,
            offered=describe_ts((p2.remote_ts,), (p2.local_ts,)),
            peer_offered=peer_ts(),
            notify="TS_UNACCEPTABLE",
        )
        return [NotifyPayload(notify_type=n.TS_UNACCEPTABLE)], None
    pol = p2.policy
    pfs = 0 if in_ike_auth else pol.pfs_group
    proto = proto_number(p2)
    choice = props.choose_esp(pol.proposals, pfs, sap.proposals, proto, ignore_dh=in_ike_auth)
    if choice is None:
        eng.fail(
            sa,
            2,
            f"no proposal of the peer is acceptable for {p2.name}",
            phase2=p2,
            offered=props.describe_esp(pol.proposals, pfs),
            peer_offered=props.describe(sap.proposals),
            notify="NO_PROPOSAL_CHOSEN",
        )
        return [NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN)], None
    chosen, wire = choice
    transport_req = msg.notify(n.USE_TRANSPORT_MODE) is not None
    if pol.mode == "transport" and not transport_req:
        eng.fail(
            sa,
            2,
            f"peer asks for tunnel mode but {p2.name} is transport mode",
            phase2=p2,
            offered=("mode transport",),
            peer_offered=("mode tunnel",),
            notify="NO_PROPOSAL_CHOSEN",
        )
        return [NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN)], None
    transport = transport_req and pol.mode == "transport"
    g_ir = b""
    ke_out: list[Payload] = []
    if pfs:
        ke = msg.get(KePayload)
        if ke is None or ke.group != pfs:
            return [NotifyPayload(notify_type=n.INVALID_KE_PAYLOAD, data=struct.pack("!H", pfs))], None
        dh = DhPrivate(pfs)
        try:
            g_ir = dh.shared(ke.data)
        except CryptoError as e:
            eng.fail(sa, 2, f"peer's PFS key exchange value is invalid: {e}", phase2=p2, notify="INVALID_SYNTAX")
            return [NotifyPayload(notify_type=n.INVALID_SYNTAX)], None
        ke_out = [KePayload(group=pfs, data=dh.public)]
    spi_in = eng.alloc_child_spi()
    assert sa.proposal is not None and sa.keys is not None
    keys = derive_child_keys(sa.proposal.prf, sa.keys.sk_d, chosen, ni, nr, g_ir, ah=proto == PROTO_AH)
    rekey_at, expire_at = lifetimes(eng, p2, False, now)
    child = ChildSa(
        child_id=eng.new_child_id(),
        phase2=p2,
        proposal=chosen,
        protocol=pol.protocol,
        mode="transport" if transport else "tunnel",
        spi_in=spi_in,
        spi_out=wire.spi,
        keys=keys,
        we_initiated=False,
        local_ts=tuple(local),
        remote_ts=tuple(remote),
        pfs_group=pfs,
        created=now,
        rekey_at=rekey_at,
        expire_at=expire_at,
        nonces=(ni, nr),
    )
    out: list[Payload] = []
    if transport:
        out.append(NotifyPayload(notify_type=n.USE_TRANSPORT_MODE))
    out.append(SaPayload(proposals=[props.esp_to_wire(chosen, wire.number, spi_in, pfs, proto)]))
    if not in_ike_auth:
        out.append(NoncePayload(data=nr))
    out += ke_out
    out += [TsiPayload(selectors=remote), TsrPayload(selectors=local)]
    return out, child


class ChildCreate(Task):
    """Initiator of a new CHILD SA under an established IKE SA."""

    exchange = CREATE_CHILD_SA
    name = "CREATE_CHILD_SA"

    def __init__(self, phase2: Phase2Tunnel) -> None:
        self.phase2 = phase2
        self.offer: ChildOffer | None = None

    def restart(self, eng: Ikev2Engine) -> Task | None:
        if self.offer is not None:
            eng.release_child_spi(self.offer.spi_in)
        return ChildCreate(self.phase2)

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        self.offer = ChildOffer.make(eng, self.phase2, self.phase2.policy.pfs_group, True)
        return self.offer.payloads()

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        assert self.offer is not None
        nonce = msg.get(NoncePayload)
        if nonce is None and msg.get(SaPayload) is not None:
            eng.fail(sa, 2, "CREATE_CHILD_SA response has no Nonce", phase2=self.phase2, notify="INVALID_SYNTAX")
            return Result.DONE
        process_response(eng, sa, msg, self.offer, self.offer.ni, nonce.data if nonce else b"", now)
        return Result.DONE


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Reply:
    """Responder of CREATE_CHILD_SA for a new child (rekeys go to child_rekey / ike_rekey)."""
    nonce = msg.get(NoncePayload)
    if nonce is None:
        return Reply([NotifyPayload(notify_type=n.INVALID_SYNTAX)])
    payloads, child = negotiate_r(eng, sa, msg, nonce.data, os.urandom(NONCE_LEN), now, in_ike_auth=False)
    if child is not None:
        eng.add_child(sa, child, now)
    return Reply(payloads)
