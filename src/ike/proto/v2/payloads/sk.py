"""Encrypted (SK, RFC 7296 §3.14) and Encrypted Fragment (SKF, RFC 7383 §2.5) payloads.

One `SkCipher` per direction per IKE SA, built once when the keys are derived. It turns an inner
payload chain into a whole protected message (or its fragments) and back:

- CBC: IV | E(payloads | padding | pad length) | ICV, the ICV an HMAC over the whole message up to it.
- AEAD (RFC 5282 AES-GCM, RFC 7634 ChaCha20-Poly1305): 8-byte IV, the ICV is the AEAD tag, and the
  associated data is the IKE header plus the SK/SKF payload header (SKF: with fragment numbers).
"""

from __future__ import annotations

import hmac
import os
import struct

from ike.proto.crypto import CryptoError, IkeCipher, integ_icv
from ike.proto.transforms import INTEG
from ike.proto.v2.payloads.base import SK, SKF, DecodeError, RawBody
from ike.proto.v2.payloads.header import HEADER_LEN, IkeHeader


class SkCipher:
    def __init__(self, encr: str, enc_key: bytes, integ: str | None, integ_key: bytes) -> None:
        self.cipher = IkeCipher(encr, enc_key)
        self.integ = integ
        self.integ_key = integ_key
        self.icv_len = self.cipher.icv_size if self.cipher.aead else INTEG[integ].icv_len if integ else 0
        self.iv_len = self.cipher.iv_size
        self.block = max(self.cipher.block_size, 1) if not self.cipher.aead else 1

    def overhead(self, plain_len: int) -> int:
        """Bytes an inner chain of `plain_len` bytes takes inside an SK payload body."""
        padded = plain_len + 1
        if self.block > 1:
            padded += (-padded) % self.block
        return self.iv_len + padded + self.icv_len - plain_len

    def _pad(self, plain: bytes) -> bytes:
        padlen = (-(len(plain) + 1)) % self.block if self.block > 1 else 0
        return plain + bytes(padlen) + bytes([padlen])

    def _protect(self, prefix: bytes, plain: bytes) -> bytes:
        """`prefix` is everything before the IV (header, payload header, SKF numbers)."""
        iv = os.urandom(self.iv_len)
        padded = self._pad(plain)
        if self.cipher.aead:
            return prefix + iv + self.cipher.aead_encrypt(iv, padded, prefix)
        body = prefix + iv + self.cipher.cbc_encrypt(iv, padded)
        assert self.integ is not None
        return body + integ_icv(self.integ, self.integ_key, body)

    def seal(self, header: IkeHeader, inner_first: int, inner: bytes) -> bytes:
        """A whole message whose only payload is SK with the inner chain `inner`."""
        body_len = self.overhead(len(inner)) + len(inner)
        total = HEADER_LEN + 4 + body_len
        header.next_payload = SK
        prefix = header.encode(total) + struct.pack("!BBH", inner_first, 0, 4 + body_len)
        return self._protect(prefix, inner)

    def seal_fragments(self, header: IkeHeader, inner_first: int, inner: bytes, max_size: int) -> list[bytes]:
        """RFC 7383: split the inner chain so every datagram fits `max_size` bytes (IKE message size,
        the caller has already subtracted IP/UDP overhead)."""
        fixed = HEADER_LEN + 8 + self.iv_len + self.icv_len + self.block  # worst-case padding
        room = max_size - fixed
        if room < 64:
            room = 64
        chunks = [inner[i : i + room] for i in range(0, len(inner), room)] or [b""]
        total = len(chunks)
        out = []
        header.next_payload = SKF
        for n, chunk in enumerate(chunks, 1):
            body_len = 4 + self.overhead(len(chunk)) + len(chunk)
            length = HEADER_LEN + 4 + body_len
            prefix = (
                header.encode(length)
                + struct.pack("!BBH", inner_first if n == 1 else 0, 0, 4 + body_len)
                + struct.pack("!HH", n, total)
            )
            out.append(self._protect(prefix, chunk))
        return out

    def open(self, message: bytes, raw: RawBody) -> bytes:
        """Check and decrypt an SK/SKF payload of `message`; returns the inner chain bytes.
        Raises CryptoError on a bad ICV or padding, DecodeError on impossible lengths."""
        start = raw.offset + (4 if raw.ptype == SKF else 0)
        body = message[start:]
        if len(body) < self.iv_len + self.icv_len + 1:
            raise DecodeError(f"encrypted payload is {len(body)} bytes, too short for IV and ICV")
        iv = body[: self.iv_len]
        if self.cipher.aead:
            padded = self.cipher.aead_decrypt(iv, body[self.iv_len :], message[:start])
        else:
            assert self.integ is not None
            icv = message[-self.icv_len :]
            if not hmac.compare_digest(integ_icv(self.integ, self.integ_key, message[: -self.icv_len]), icv):
                raise CryptoError("integrity check (ICV) failed")
            padded = self.cipher.cbc_decrypt(iv, body[self.iv_len : -self.icv_len])
        if not padded:
            raise CryptoError("encrypted payload is empty")
        padlen = padded[-1]
        if padlen + 1 > len(padded):
            raise CryptoError(f"pad length {padlen} exceeds the decrypted data")
        return padded[: -(padlen + 1)]


def fragment_numbers(raw: RawBody) -> tuple[int, int]:
    if len(raw.data) < 4:
        raise DecodeError("SKF payload too short for fragment numbers")
    num, total = struct.unpack_from("!HH", raw.data)
    if not 1 <= num <= total:
        raise DecodeError(f"fragment number {num} of {total} is invalid")
    return num, total
