"""IKEv2 (RFC 7296) protocol engine, sans-IO.

payloads/    the codec, one module per payload family (SK/SKF encryption in payloads/sk.py)
keys.py      SKEYSEED, prf+, SK_* and child KEYMAT
auth.py      AUTH values: PSK, RSA/ECDSA classic, RFC 7427 digital signatures, Ed25519
proposals.py SA proposals <-> policy, chosen in our local order
exchanges/   one module per exchange (ike_init, ike_auth, child_create, child_rekey, ike_rekey,
             delete, dpd), initiator tasks with build_i/process_i, responders as process_r
state.py     IKE/CHILD SA data and the explicit state tables
engine.py    Ikev2Engine: routing of messages to tasks, retransmission, timers, events
"""

from __future__ import annotations

import struct

from ike.proto.api import Demux
from ike.proto.v2.engine import Ikev2Engine, StatelessOutput
from ike.proto.v2.exchanges.ike_init import CookieGuard

__all__ = ["CookieGuard", "Ikev2Engine", "StatelessOutput", "demux"]

_ZERO = bytes(8)


def demux(data: bytes) -> Demux | None:
    """Our SPI and the peer's from an IKEv2 header; None if `data` is not one. `our_spi` is None for
    a first IKE_SA_INIT request (and its retransmissions: route those by `peer_spi` and the source
    address to the engine that answered the first one, if any)."""
    if len(data) < 28:
        return None
    spi_i, spi_r, _nxt, version, _ex, flags, _mid, length = struct.unpack_from("!8s8sBBBBII", data)
    if version >> 4 != 2 or length != len(data):
        return None
    if flags & 0x08:  # from the original initiator: we are the responder
        return Demux(None if spi_r == _ZERO else spi_r, spi_i, 2)
    return Demux(spi_i, spi_r, 2)
