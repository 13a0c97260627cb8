"""CHILD SA rekey (RFC 7296 §1.3.3, §2.8) with simultaneous rekeys resolved as §2.8.1 says.

    initiator  HDR, SK {N(REKEY_SA), [N(USE_TRANSPORT_MODE)], SA, Ni, [KEi], TSi, TSr}  -->
               <--  HDR, SK {[N(USE_TRANSPORT_MODE)], SA, Nr, [KEr], TSi, TSr}
    then the initiator deletes the old SA (delete.py).

If both ends rekey the same SA at once, each answers the other's request, and once our response is
in, the new SA created with the lowest of the four nonces is redundant: whoever created it deletes
it, and the other end deletes the old SA.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ike.proto.v2.exchanges import child_create
from ike.proto.v2.exchanges.base import Reply, Result, Task
from ike.proto.v2.exchanges.delete import DeleteChild
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.header import CREATE_CHILD_SA
from ike.proto.v2.payloads.message import Message
from ike.proto.v2.payloads.nonce import NoncePayload
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.state import ChildSa, ChildState, IkeSa

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine

RETRY_AFTER_S = 10.0


class ChildRekey(Task):
    exchange = CREATE_CHILD_SA
    name = "CREATE_CHILD_SA (rekey)"

    def __init__(self, child_id: int) -> None:
        self.child_id = child_id
        self.offer: child_create.ChildOffer | None = None

    def restart(self, eng: Ikev2Engine) -> Task | None:
        old = eng.find_child(self.child_id)
        if old is None:
            return None
        if self.offer is not None:
            eng.release_child_spi(self.offer.spi_in)
        if old.state is ChildState.REKEYING:
            if old.peer_rekey is not None and old.peer_rekey.state is not ChildState.DELETED:
                old.set_state(ChildState.REKEYED)  # the peer's rekey took over
                return None
            old.set_state(ChildState.INSTALLED)
        return ChildRekey(self.child_id)

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        old = eng.find_child(self.child_id)
        if old is None or old.state is not ChildState.INSTALLED:
            return None
        old.set_state(ChildState.REKEYING)
        old.peer_rekey = None
        self.offer = child_create.ChildOffer.make(
            eng, old.phase2, old.phase2.policy.pfs_group, True, old.local_ts, old.remote_ts
        )
        proto = child_create.proto_number(old.phase2)
        return [NotifyPayload(protocol=proto, spi=old.spi_in, notify_type=n.REKEY_SA), *self.offer.payloads()]

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        assert self.offer is not None
        old = eng.find_child(self.child_id)
        nonce = msg.get(NoncePayload)
        new = None
        if old is not None:
            if msg.notify(n.CHILD_SA_NOT_FOUND) is not None and old.peer_rekey is None:
                # The peer has no such SA any more (its Delete crossed ours or got lost): drop ours too.
                eng.remove_child(sa, old, "unknown to the peer")
                return Result.DONE
            if msg.notify(n.TEMPORARY_FAILURE) is not None or msg.notify(n.CHILD_SA_NOT_FOUND) is not None:
                # The peer is busy with this SA (its own rekey won, or it is deleting it).
                _rekey_failed(old, now)
                return Result.DONE
            new = child_create.process_response(
                eng, sa, msg, self.offer, self.offer.ni, nonce.data if nonce else b"", now, rekey_of=old.child_id
            )
        if old is None or old.state is not ChildState.REKEYING:
            if new is not None:  # the old one vanished meanwhile: keep the new one
                return Result.DONE
            return Result.DONE
        if new is None:
            _rekey_failed(old, now)
            return Result.DONE
        peer = old.peer_rekey
        old.set_state(ChildState.REKEYED)
        if peer is not None and peer.state is not ChildState.DELETED and min(new.nonces) < min(peer.nonces):
            # Ours holds the lowest nonce: it is the redundant one (§2.8.1); the peer deletes the old SA.
            eng.queue(sa, DeleteChild(new.child_id, "redundant after simultaneous rekey"), now)
            return Result.DONE
        eng.queue(sa, DeleteChild(old.child_id, "rekeyed"), now)
        return Result.DONE


def _rekey_failed(old: ChildSa, now: float) -> None:
    if old.state is not ChildState.REKEYING:
        return
    if old.peer_rekey is not None and old.peer_rekey.state is not ChildState.DELETED:
        old.set_state(ChildState.REKEYED)  # the peer's rekey succeeded; it deletes the old SA
    else:
        old.set_state(ChildState.INSTALLED)
        old.rekey_at = now + RETRY_AFTER_S


def process_r(eng: Ikev2Engine, sa: IkeSa, msg: Message, rekey: NotifyPayload, now: float) -> Reply:
    old: ChildSa | None = eng.child_by_outbound_spi(sa, rekey.spi)
    if old is None or old.state in (ChildState.DELETING, ChildState.DELETED):
        return Reply([NotifyPayload(protocol=rekey.protocol, spi=rekey.spi, notify_type=n.CHILD_SA_NOT_FOUND)])
    if old.state is ChildState.REKEYED:
        return Reply([NotifyPayload(notify_type=n.TEMPORARY_FAILURE)])
    nonce = msg.get(NoncePayload)
    if nonce is None:
        return Reply([NotifyPayload(notify_type=n.INVALID_SYNTAX)])
    payloads, child = child_create.negotiate_r(
        eng, sa, msg, nonce.data, os.urandom(child_create.NONCE_LEN), now, in_ike_auth=False, rekey=old
    )
    if child is not None:
        child.rekey_of = old.child_id
        if old.state is ChildState.REKEYING:
            old.peer_rekey = child  # simultaneous rekey: decided when our response arrives
        else:
            old.set_state(ChildState.REKEYED)
        eng.add_child(sa, child, now)
    return Reply(payloads)
