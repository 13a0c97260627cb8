"""One ISAKMP SA (phase 1 result): cookies, negotiated algorithms, SKEYIDs, the cipher and IV
chains, NAT state, lifetimes. `seal` builds (and encrypts) an outgoing message; `open` decrypts an
incoming one without advancing the IVs, `accept` advances them once the message checked out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ike.policy import Identity, IkeProposal, Phase1Tunnel
from ike.proto.api import Address, Role
from ike.proto.crypto import IkeCipher, prf
from ike.proto.transforms import ENCR
from ike.proto.v1.encryption import decrypt_message, encrypt_payloads
from ike.proto.v1.keys import IvChain, SkeyIds, encryption_key
from ike.proto.v1.payloads.chain import Decoded, decode_chain, encode_chain
from ike.proto.v1.payloads.hash import HashPayload
from ike.proto.v1.payloads.header import FLAG_ENCRYPTION, HEADER_LEN, Header, encode_header

_GENERIC = struct.Struct("!BBH")  # a payload's generic header


@dataclass
class IsakmpSa:
    sa_id: int
    role: Role
    cky_i: bytes
    cky_r: bytes
    local: Address
    remote: Address
    exchange: int
    phase1: Phase1Tunnel | None = None
    proposal: IkeProposal | None = None
    auth_method: int = 0
    lifetime_s: int = 0
    lifetime_kb: int = 0
    keys: SkeyIds | None = None
    cipher: IkeCipher | None = None
    iv: IvChain | None = None
    nat_local: bool = False
    nat_remote: bool = False
    natt: int = 0  # natt.NATT_*
    peer_dpd: bool = False
    local_id: Identity | None = None
    remote_id: Identity | None = None
    established_at: float | None = None
    bytes_seen: int = 0
    rekey_of: int | None = None
    deleted: bool = False
    used_msgids: set[int] = field(default_factory=set)

    @property
    def our_cookie(self) -> bytes:
        return self.cky_i if self.role is Role.INITIATOR else self.cky_r

    @property
    def cookies(self) -> bytes:
        return self.cky_i + self.cky_r

    @property
    def prf_name(self) -> str:
        assert self.proposal is not None
        return self.proposal.prf

    def install_keys(self, keys: SkeyIds, iv0: bytes) -> None:
        assert self.proposal is not None
        e = ENCR[self.proposal.encr]
        self.keys = keys
        self.cipher = IkeCipher(
            self.proposal.encr, encryption_key(self.prf_name, keys.e, e.key_material_len(self.proposal.encr_keylen))
        )
        self.iv = IvChain(self.prf_name, self.cipher.block_size, iv0)

    def header(self, exchange: int, msgid: int, flags: int = 0) -> Header:
        return Header(self.cky_i, self.cky_r, 0, exchange, flags, msgid)

    def seal(self, exchange: int, msgid: int, payloads: list[object], encrypt: bool, flags: int = 0) -> bytes:
        first, body, _ = encode_chain(payloads)
        return self._seal_chain(exchange, msgid, first, body, encrypt, flags)

    def _seal_chain(self, exchange: int, msgid: int, first: int, body: bytes, encrypt: bool, flags: int) -> bytes:
        """`seal` of an encoded payload chain."""
        if not encrypt:
            return encode_header(self.cky_i, self.cky_r, first, exchange, flags, msgid, HEADER_LEN + len(body)) + body
        assert self.cipher is not None and self.iv is not None
        out = encrypt_payloads(self.cky_i, self.cky_r, first, exchange, flags, msgid, body, self.cipher,
                               self.iv.get(msgid))  # fmt: skip
        self.iv.advance(msgid, out[HEADER_LEN:])
        self.bytes_seen += len(out)
        return out

    def open(self, data: bytes, h: Header) -> list[Decoded]:
        """Decode (and decrypt if the E flag is set) without touching the IV chain."""
        if h.flags & FLAG_ENCRYPTION:
            if self.cipher is None or self.iv is None:
                from ike.proto.v1.payloads.errors import DecodeError

                raise DecodeError("encrypted message before keys exist")
            plain = decrypt_message(data, self.cipher, self.iv.get(h.message_id))
            return decode_chain(h.next_payload, plain, trailing_ok=max(255, self.cipher.block_size))
        return decode_chain(h.next_payload, data[HEADER_LEN:])

    def accept(self, data: bytes, h: Header) -> None:
        if h.flags & FLAG_ENCRYPTION and self.iv is not None:
            self.iv.advance(h.message_id, data[HEADER_LEN:])
        self.bytes_seen += len(data)

    # --- HASH(1)/(2)/(3) of quick mode and informational exchanges (RFC 2409 §5.5, §5.7) ---------

    def hash_of(self, data: bytes) -> bytes:
        assert self.keys is not None
        return prf(self.prf_name, self.keys.a, data)

    def protected(
        self, exchange: int, msgid: int, payloads: list[object], prefix: bytes = b"", flags: int = 0
    ) -> bytes:
        """HDR*, HASH(msgid | prefix | payloads...), payloads: quick mode 1/2 and informational."""
        first, body, _ = encode_chain(payloads)
        digest = self.hash_of(msgid.to_bytes(4, "big") + prefix + body)
        # The HASH payload goes in front of the chain already encoded (the bytes encode_chain gives
        # for [HashPayload(digest), *payloads]) rather than encoding the payloads a second time.
        hash_raw = _GENERIC.pack(first, 0, len(digest) + 4) + digest
        return self._seal_chain(exchange, msgid, HashPayload.TYPE, hash_raw + body, True, flags)
