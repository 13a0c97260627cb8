"""Notify payload (RFC 7296 §3.10) and the notify types we send or understand."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ike.proto.v2.payloads.base import NOTIFY, DecodeError, Payload, register

# Errors
UNSUPPORTED_CRITICAL_PAYLOAD = 1
INVALID_IKE_SPI = 4
INVALID_MAJOR_VERSION = 5
INVALID_SYNTAX = 7
INVALID_MESSAGE_ID = 9
INVALID_SPI = 11
NO_PROPOSAL_CHOSEN = 14
INVALID_KE_PAYLOAD = 17
AUTHENTICATION_FAILED = 24
SINGLE_PAIR_REQUIRED = 34
NO_ADDITIONAL_SAS = 35
INTERNAL_ADDRESS_FAILURE = 36
FAILED_CP_REQUIRED = 37
TS_UNACCEPTABLE = 38
INVALID_SELECTORS = 39
TEMPORARY_FAILURE = 43
CHILD_SA_NOT_FOUND = 44
# Status
INITIAL_CONTACT = 16384
SET_WINDOW_SIZE = 16385
ADDITIONAL_TS_POSSIBLE = 16386
IPCOMP_SUPPORTED = 16387
NAT_DETECTION_SOURCE_IP = 16388
NAT_DETECTION_DESTINATION_IP = 16389
COOKIE = 16390
USE_TRANSPORT_MODE = 16391
HTTP_CERT_LOOKUP_SUPPORTED = 16392
REKEY_SA = 16393
ESP_TFC_PADDING_NOT_SUPPORTED = 16394
NON_FIRST_FRAGMENTS_ALSO = 16395
MOBIKE_SUPPORTED = 16396
MULTIPLE_AUTH_SUPPORTED = 16404
ANOTHER_AUTH_FOLLOWS = 16405
REDIRECT_SUPPORTED = 16406
EAP_ONLY_AUTHENTICATION = 16417
IKEV2_FRAGMENTATION_SUPPORTED = 16430
SIGNATURE_HASH_ALGORITHMS = 16431

NOTIFY_NAMES = {v: k for k, v in globals().items() if k.isupper() and isinstance(v, int)}


def notify_name(t: int) -> str:
    return NOTIFY_NAMES.get(t, f"notify type {t}")


_HEAD = struct.Struct("!BBH")  # Protocol ID, SPI Size, Notify Message Type


@register
@dataclass(slots=True)
class NotifyPayload(Payload):
    TYPE = NOTIFY
    protocol: int = 0
    spi: bytes = b""
    notify_type: int = 0
    data: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.notify_type < 16384

    def encode_body(self) -> bytes:
        return _HEAD.pack(self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, data: bytes, ptype: int) -> NotifyPayload:
        if len(data) < 4:
            raise DecodeError(f"Notify payload is {len(data)} bytes, needs at least 4")
        proto, spi_size, ntype = _HEAD.unpack_from(data)
        if spi_size not in (0, 4, 8) or 4 + spi_size > len(data):
            raise DecodeError(f"{notify_name(ntype)}: SPI size {spi_size} is invalid")
        # critical, protocol, spi, notify_type, data
        return cls(False, proto, data[4 : 4 + spi_size], ntype, data[4 + spi_size :])
