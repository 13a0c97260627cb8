"""Informational exchanges (RFC 2408 §4.8, RFC 2409 §5.7): one message, no reply, except DPD.

    HDR*, HASH(1), N | D          HASH(1) = prf(SKEYID_a, M-ID | N/D)

- Delete: an ISAKMP SA by its cookie pair (protocol 1, 16-byte SPI), IPsec SAs by the SPIs the
  sender receives with (protocol 3 ESP / 2 AH).
- DPD (RFC 3706): R-U-THERE / R-U-THERE-ACK notifies, protocol ISAKMP, SPI = CKY-I | CKY-R, data =
  a 32-bit sequence number; the ACK echoes it.
- Before phase 1 has keys, an error notify goes out in the clear (nothing to protect it with).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from ike.proto.crypto import CryptoError
from ike.proto.v1.exchanges.errors import Drop
from ike.proto.v1.isakmp_sa import IsakmpSa
from ike.proto.v1.payloads import DecodeError, DeletePayload, Exchange, HashPayload, NotifyPayload, NotifyType
from ike.proto.v1.payloads.encoding import plain_payloads
from ike.proto.v1.payloads.header import FLAG_ENCRYPTION, Header
from ike.proto.v1.payloads.sa import PROTO_ISAKMP


def new_msgid(sa: IsakmpSa) -> int:
    while True:
        m = int.from_bytes(os.urandom(4), "big")
        if m and m not in sa.used_msgids:
            sa.used_msgids.add(m)
            return m


def protected(sa: IsakmpSa, payload: object) -> bytes:
    return sa.protected(Exchange.INFORMATIONAL, new_msgid(sa), [payload])


def delete_isakmp(sa: IsakmpSa) -> bytes:
    return protected(sa, DeletePayload(PROTO_ISAKMP, (sa.cookies,)))


def delete_ipsec(sa: IsakmpSa, protocol: int, spis: tuple[bytes, ...]) -> bytes:
    return protected(sa, DeletePayload(protocol, spis))


def notify(sa: IsakmpSa, notify_type: int, protocol: int = PROTO_ISAKMP, spi: bytes | None = None,
           data: bytes = b"") -> bytes:  # fmt: skip
    return protected(sa, NotifyPayload(protocol, notify_type, sa.cookies if spi is None else spi, data))


def plain_notify(cky_i: bytes, cky_r: bytes, notify_type: int) -> bytes:
    """An unprotected error notify for a negotiation that has no keys yet."""
    msgid = int.from_bytes(os.urandom(4), "big") or 1
    return plain_payloads(
        Header(cky_i, cky_r, 0, Exchange.INFORMATIONAL, 0, msgid),
        [NotifyPayload(PROTO_ISAKMP, notify_type, cky_i + cky_r)],
    )


def r_u_there(sa: IsakmpSa, seq: int) -> bytes:
    return notify(sa, NotifyType.R_U_THERE, data=seq.to_bytes(4, "big"))


def r_u_there_ack(sa: IsakmpSa, seq: int) -> bytes:
    return notify(sa, NotifyType.R_U_THERE_ACK, data=seq.to_bytes(4, "big"))


@dataclass(frozen=True)
class Received:
    notifies: tuple[NotifyPayload, ...]
    deletes: tuple[DeletePayload, ...]
    protected: bool


def receive(sa: IsakmpSa | None, data: bytes, h: Header) -> Received:
    """Check and decode an informational message. Protected ones must carry a valid HASH(1);
    unprotected ones are only returned for the caller to judge (error notifies during phase 1)."""
    if h.flags & FLAG_ENCRYPTION:
        if sa is None or sa.keys is None:
            raise Drop("encrypted informational message for an SA without keys")
        try:
            payloads = sa.open(data, h)
        except (DecodeError, CryptoError) as e:
            raise Drop(f"malformed informational message: {e}") from None
        if not payloads or not isinstance(payloads[0].payload, HashPayload):
            raise Drop("informational message does not start with a HASH payload")
        rest = payloads[1:]
        want = sa.hash_of(h.message_id.to_bytes(4, "big") + b"".join(d.raw for d in rest))
        if not hmac.compare_digest(payloads[0].payload.data, want):
            raise Drop("informational HASH(1) does not verify")
        sa.accept(data, h)
        sa.iv.forget(h.message_id) if sa.iv is not None else None
        prot = True
    else:
        from ike.proto.v1.payloads.chain import decode_chain

        try:
            rest = decode_chain(h.next_payload, data[28:])
        except DecodeError as e:
            raise Drop(f"malformed informational message: {e}") from None
        prot = False
    return Received(
        tuple(d.payload for d in rest if isinstance(d.payload, NotifyPayload)),
        tuple(d.payload for d in rest if isinstance(d.payload, DeletePayload)),
        prot,
    )
