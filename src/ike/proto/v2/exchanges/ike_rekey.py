"""IKE SA rekey (RFC 7296 §1.3.2, §2.18) with simultaneous rekeys resolved as §2.8.2 says.

initiator  HDR, SK {SA (IKE proposals, new SPIi), Ni, KEi}  -->
           <--  HDR, SK {SA (new SPIr), Nr, KEr}
SKEYSEED = prf_old(SK_d old, g^ir new | Ni | Nr); the CHILD SAs move to the new IKE SA and the
rekey initiator deletes the old one.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from ike.proto.crypto import CryptoError, DhPrivate
from ike.proto.v2 import proposals as props
from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.exchanges.delete import DeleteIke
from ike.proto.v2.keys import derive_ike_keys, skeyseed_rekey
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.header import CREATE_CHILD_SA
from ike.proto.v2.payloads.ke import KePayload
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.payloads.nonce import NoncePayload
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.payloads.sa import PROTO_IKE, SaPayload
from ike.proto.v2.state import IkeSa, IkeState

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine

NONCE_LEN = 32
RETRY_AFTER_S = 10.0


def is_ike_rekey(msg: Message) -> bool:
    sap = msg.get(SaPayload)
    return sap is not None and any(p.protocol == PROTO_IKE for p in sap.proposals)


def _keys(old: IkeSa, new: IkeSa, g_ir: bytes) -> None:
    assert old.keys is not None and old.proposal is not None and new.proposal is not None
    seed = skeyseed_rekey(old.proposal.prf, old.keys.sk_d, g_ir, new.ni, new.nr)
    new.keys = derive_ike_keys(new.proposal, seed, new.ni, new.nr, new.spi_i, new.spi_r)
    new.out, new.inb = new.keys.ciphers(new.proposal, new.initiator)


class IkeRekey(Task):
    exchange = CREATE_CHILD_SA
    name = "CREATE_CHILD_SA (IKE rekey)"

    def __init__(self) -> None:
        self.group = 0
        self.tried: set[int] = set()
        self.spi = b""
        self.ni = b""
        self.dh: DhPrivate | None = None

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        if sa.state is not IkeState.ESTABLISHED or sa.phase1 is None or sa.proposal is None:
            return None
        if not self.group:
            self.group = sa.proposal.dh
        self.tried.add(self.group)
        self.spi = self.spi or eng.new_ike_spi()
        self.ni = os.urandom(NONCE_LEN)
        self.dh = DhPrivate(self.group)
        sa.peer_rekey = None
        ours = sa.phase1.policy.proposals
        return [
            SaPayload(proposals=[props.ike_to_wire(p, i + 1, self.spi) for i, p in enumerate(ours)]),
            NoncePayload(data=self.ni),
            KePayload(group=self.group, data=self.dh.public),
        ]

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        assert sa.phase1 is not None and self.dh is not None
        ours = sa.phase1.policy.proposals
        err = msg.error_notify()
        if err is not None and sa.peer_rekey is not None and sa.state is IkeState.ESTABLISHED:
            # Ours failed while the peer's rekey went through: the peer's new SA takes over.
            eng.complete_ike_rekey(sa, sa.peer_rekey, now)
            return Result.DONE
        if err is not None:
            if err.notify_type == n.INVALID_KE_PAYLOAD and len(err.data) == 2:
                (group,) = struct.unpack("!H", err.data)
                if group in [p.dh for p in ours] and group not in self.tried:
                    self.group = group
                    return Result.RETRY
            if err.notify_type == n.TEMPORARY_FAILURE:
                sa.rekey_at = now + RETRY_AFTER_S
                return Result.DONE
            eng.fail(
                sa,
                1,
                f"peer refused to rekey the IKE SA: {n.notify_name(err.notify_type)}",
                offered=props.describe_ike(ours),
                notify=n.notify_name(err.notify_type),
                kill=False,
            )
            sa.rekey_at = now + RETRY_AFTER_S * 6
            return Result.DONE
        sap, nonce, ke = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
        chosen = props.selected_ike(ours, sap.proposals) if sap else None
        if sap is None or nonce is None or ke is None or chosen is None or len(sap.proposals[0].spi) != 8:
            eng.fail(
                sa,
                1,
                "IKE rekey response is malformed or chose a proposal we did not offer",
                offered=props.describe_ike(ours),
                peer_offered=props.describe(sap.proposals) if sap else (),
                kill=False,
            )
            sa.rekey_at = now + RETRY_AFTER_S * 6
            return Result.DONE
        if ke.group != self.group or chosen.dh != self.group:
            eng.fail(sa, 1, f"IKE rekey response uses DH group {ke.group}, we sent {self.group}", kill=False)
            return Result.DONE
        try:
            g_ir = self.dh.shared(ke.data)
        except CryptoError as e:
            eng.fail(sa, 1, f"peer's IKE rekey key exchange value is invalid: {e}", kill=False)
            return Result.DONE
        if sa.state is not IkeState.ESTABLISHED:
            return Result.DONE
        new = eng.new_sa(
            initiator=True,
            spi_i=self.spi,
            local=sa.local,
            remote=sa.remote,
            state=IkeState.ESTABLISHED,
            now=now,
            spi_r=sap.proposals[0].spi,
        )
        new.proposal, new.ni, new.nr = chosen, self.ni, nonce.data
        _keys(sa, new, g_ir)
        peer = sa.peer_rekey
        if peer is not None and peer.state is not IkeState.DEAD and min(new.ni, new.nr) < min(peer.ni, peer.nr):
            # Ours is redundant (§2.8.2): the peer's new SA takes over, we delete ours.
            eng.complete_ike_rekey(sa, peer, now)
            eng.inherit(sa, new)
            eng.queue(new, DeleteIke("redundant after simultaneous IKE rekey"), now)
            return Result.DONE
        eng.complete_ike_rekey(sa, new, now)
        eng.queue(sa, DeleteIke("rekeyed"), now)
        return Result.DONE


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Reply:
    assert sa.phase1 is not None
    if sa.state is not IkeState.ESTABLISHED or sa.peer_rekey is not None:
        return Reply([NotifyPayload(notify_type=n.TEMPORARY_FAILURE)])
    ours = sa.phase1.policy.proposals
    sap, nonce, ke = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
    if sap is None or nonce is None or ke is None:
        return Reply([NotifyPayload(notify_type=n.INVALID_SYNTAX)])
    choice = props.choose_ike(ours, sap.proposals)
    if choice is None or len(choice[1].spi) != 8:
        eng.fail(
            sa,
            1,
            "no IKE proposal of the peer's rekey is acceptable",
            offered=props.describe_ike(ours),
            peer_offered=props.describe(sap.proposals),
            notify="NO_PROPOSAL_CHOSEN",
            kill=False,
        )
        return Reply([NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN)])
    chosen, wire = choice
    if ke.group != chosen.dh:
        return Reply([NotifyPayload(notify_type=n.INVALID_KE_PAYLOAD, data=struct.pack("!H", chosen.dh))])
    dh = DhPrivate(chosen.dh)
    try:
        g_ir = dh.shared(ke.data)
    except CryptoError as e:
        eng.fail(sa, 1, f"peer's IKE rekey key exchange value is invalid: {e}", notify="INVALID_SYNTAX", kill=False)
        return Reply([NotifyPayload(notify_type=n.INVALID_SYNTAX)])
    new = eng.new_sa(
        initiator=False, spi_i=wire.spi, local=sa.local, remote=sa.remote, state=IkeState.ESTABLISHED, now=now
    )
    new.proposal, new.ni, new.nr = chosen, nonce.data, os.urandom(NONCE_LEN)
    _keys(sa, new, g_ir)
    out: list[Payload] = [
        SaPayload(proposals=[props.ike_to_wire(chosen, wire.number, new.spi_r)]),
        NoncePayload(data=new.nr),
        KePayload(group=chosen.dh, data=dh.public),
    ]
    o = sa.outstanding
    if o is not None and isinstance(o.task, IkeRekey):
        sa.peer_rekey = new  # simultaneous rekey: decided when our own response arrives
        eng.inherit(sa, new)
    else:
        eng.complete_ike_rekey(sa, new, now)
    return Reply(out)
