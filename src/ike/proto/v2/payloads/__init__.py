"""The IKEv2 codec: one module per payload family, one error type (`DecodeError`).

header.py   IKE header, exchange types, flags
base.py     generic payload header, payload type numbers, chain encode/decode
sa.py       SA payload (proposals, transforms)        ke.py     KE
nonce.py    Nonce                                      id.py     IDi / IDr
auth.py     AUTH                                       cert.py   CERT / CERTREQ
notify.py   Notify and notify type numbers             delete.py Delete
ts.py       TSi / TSr                                  vendor.py Vendor ID
sk.py       SK / SKF encryption and integrity          message.py whole messages
"""

from ike.proto.v2.payloads.auth import AuthPayload
from ike.proto.v2.payloads.base import DecodeError, Payload, RawBody, UnknownPayload, decode_chain, encode_chain
from ike.proto.v2.payloads.cert import CertPayload, CertReqPayload
from ike.proto.v2.payloads.delete import DeletePayload
from ike.proto.v2.payloads.header import IkeHeader
from ike.proto.v2.payloads.id import IdiPayload, IdPayload, IdrPayload
from ike.proto.v2.payloads.ke import KePayload
from ike.proto.v2.payloads.message import Message, decode_outer, encode_plain
from ike.proto.v2.payloads.nonce import NoncePayload
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.payloads.sa import Proposal, SaPayload, Transform
from ike.proto.v2.payloads.sk import SkCipher
from ike.proto.v2.payloads.ts import TsiPayload, TsPayload, TsrPayload
from ike.proto.v2.payloads.vendor import VendorIdPayload

__all__ = [
    "AuthPayload",
    "CertPayload",
    "CertReqPayload",
    "DecodeError",
    "DeletePayload",
    "IdPayload",
    "IdiPayload",
    "IdrPayload",
    "IkeHeader",
    "KePayload",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "RawBody",
    "SaPayload",
    "SkCipher",
    "Transform",
    "TsPayload",
    "TsiPayload",
    "TsrPayload",
    "UnknownPayload",
    "VendorIdPayload",
    "decode_chain",
    "decode_outer",
    "encode_chain",
    "encode_plain",
]
