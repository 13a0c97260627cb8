"""Whole unencrypted messages: header + payload chain."""

from __future__ import annotations

from ike.proto.v1.payloads.chain import encode_chain
from ike.proto.v1.payloads.header import HEADER_LEN, Header


def plain_payloads(h: Header, payloads: list[object]) -> bytes:
    first, body, _ = encode_chain(payloads)
    h2 = Header(h.cky_i, h.cky_r, first, h.exchange, h.flags, h.message_id)
    return h2.encode(HEADER_LEN + len(body)) + body
