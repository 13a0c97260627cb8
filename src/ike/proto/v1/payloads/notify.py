"""Notification payload (RFC 2408 §3.14, RFC 2407 §4.6.3, RFC 3706 DPD)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

from ike.proto.v1.payloads.errors import DecodeError


class NotifyType(enum.IntEnum):
    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136
    R_U_THERE_ACK = 36137


def notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"


@dataclass(frozen=True)
class NotifyPayload:
    TYPE: ClassVar[int] = 11
    protocol: int
    notify_type: int
    spi: bytes = b""
    data: bytes = b""
    doi: int = 1

    def body(self) -> bytes:
        return struct.pack("!IBBH", self.doi, self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def parse(cls, body: bytes) -> NotifyPayload:
        if len(body) < 8:
            raise DecodeError("notification payload shorter than 8 bytes")
        doi, proto, spi_size, t = struct.unpack_from("!IBBH", body)
        if 8 + spi_size > len(body):
            raise DecodeError(f"notification SPI size {spi_size} runs past the payload")
        return cls(proto, t, bytes(body[8 : 8 + spi_size]), bytes(body[8 + spi_size :]), doi)
