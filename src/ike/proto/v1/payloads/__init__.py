"""ISAKMP codec (RFC 2408 §3): the fixed header, the generic payload chain, and one module per
payload family. Every decoder checks lengths strictly and raises `DecodeError` naming the problem.

    header.py      ISAKMP header (cookies, exchange type, flags, message ID)
    attributes.py  data attributes (TV/TLV) and the Attribute payload (type 14)
    sa.py          SA / Proposal / Transform
    ke.py nonce.py hash.py sig.py vendor.py natd.py   opaque-data payloads
    id.py          Identification (phase 1 identities, phase 2 selectors), NAT-OA
    cert.py        Certificate / Certificate Request
    notify.py delete.py   Notification / Delete
    chain.py       the payload chain: `decode_chain`, `encode_chain`
"""

from ike.proto.v1.payloads.attributes import Attr, AttributePayload
from ike.proto.v1.payloads.cert import CertPayload, CertReqPayload
from ike.proto.v1.payloads.chain import Payload, RawPayload, decode_chain, encode_chain
from ike.proto.v1.payloads.delete import DeletePayload
from ike.proto.v1.payloads.errors import DecodeError
from ike.proto.v1.payloads.hash import HashPayload
from ike.proto.v1.payloads.header import HEADER_LEN, Exchange, Flags, Header
from ike.proto.v1.payloads.id import IdPayload, NatOaPayload
from ike.proto.v1.payloads.ke import KePayload
from ike.proto.v1.payloads.natd import NatDPayload
from ike.proto.v1.payloads.nonce import NoncePayload
from ike.proto.v1.payloads.notify import NotifyPayload, NotifyType
from ike.proto.v1.payloads.sa import Proposal, SaPayload, Transform
from ike.proto.v1.payloads.sig import SigPayload
from ike.proto.v1.payloads.types import PayloadType
from ike.proto.v1.payloads.vendor import VendorIdPayload

__all__ = [
    "HEADER_LEN",
    "Attr",
    "AttributePayload",
    "CertPayload",
    "CertReqPayload",
    "DecodeError",
    "DeletePayload",
    "Exchange",
    "Flags",
    "HashPayload",
    "Header",
    "IdPayload",
    "KePayload",
    "NatDPayload",
    "NatOaPayload",
    "NoncePayload",
    "NotifyPayload",
    "NotifyType",
    "Payload",
    "PayloadType",
    "Proposal",
    "RawPayload",
    "SaPayload",
    "SigPayload",
    "Transform",
    "VendorIdPayload",
    "decode_chain",
    "encode_chain",
]
