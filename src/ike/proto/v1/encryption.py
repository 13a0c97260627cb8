"""Where IKEv1 messages are encrypted and decrypted (RFC 2408 §3.1 E flag, RFC 2409 appendix B).

Everything after the ISAKMP header is CBC-encrypted with the phase 1 cipher; the plaintext is
padded with zeros to the block size and the header length covers the padding.
"""

from __future__ import annotations

from ike.proto.crypto import CryptoError, IkeCipher
from ike.proto.v1.payloads.header import FLAG_ENCRYPTION, HEADER_LEN, Header, encode_header


def encrypt_message(header: Header, payloads: bytes, cipher: IkeCipher, iv: bytes) -> bytes:
    return encrypt_payloads(header.cky_i, header.cky_r, header.next_payload, header.exchange, header.flags,
                            header.message_id, payloads, cipher, iv)  # fmt: skip


def encrypt_payloads(cky_i: bytes, cky_r: bytes, next_payload: int, exchange: int, flags: int, message_id: int,
                     payloads: bytes, cipher: IkeCipher, iv: bytes) -> bytes:  # fmt: skip
    """`encrypt_message` with the header given by its fields."""
    bs = cipher.block_size
    padded = payloads + bytes(-len(payloads) % bs)
    ct = cipher.cbc_encrypt(iv, padded)
    return encode_header(cky_i, cky_r, next_payload, exchange, flags | FLAG_ENCRYPTION, message_id,
                         HEADER_LEN + len(ct)) + ct  # fmt: skip


def plain_message(header: Header, payloads: bytes) -> bytes:
    return header.encode(HEADER_LEN + len(payloads)) + payloads


def decrypt_message(data: bytes, cipher: IkeCipher, iv: bytes) -> bytes:
    """The plaintext payload chain (with padding); the caller advances the IV chain with
    `data[HEADER_LEN:]` once the message checks out."""
    ct = data[HEADER_LEN:]
    if not ct or len(ct) % cipher.block_size:
        raise CryptoError(f"encrypted part of {len(ct)} bytes is not a multiple of the {cipher.block_size}-byte block")
    return cipher.cbc_decrypt(iv, ct)
