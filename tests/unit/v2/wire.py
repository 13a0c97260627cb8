"""Reading the engines' messages off the wire in tests, with an SK decryption (`sk_open`) written
against RFC 7296 §3.14, RFC 5282, RFC 7634 and RFC 7383 on `cryptography` directly, sharing no code
with ike.proto.v2.payloads.sk; only payload decoding is the codec's."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike.policy import IkeProposal
from ike.proto.api import Datagram
from ike.proto.v2.keys import IkeKeys
from ike.proto.v2.payloads import Payload, decode_chain, decode_outer, encode_chain, encode_plain

from .harness import Net

# RFC 7296 §3.3.2 / RFC 4868: integrity algorithm -> (hash, ICV length); the key is the hash length.
HASH = {
    "hmac-sha1-96": ("sha1", 12),
    "hmac-sha2-256-128": ("sha256", 16),
    "hmac-sha2-384-192": ("sha384", 24),
    "hmac-sha2-512-256": ("sha512", 32),
}


def sk_open(msg: bytes, encr: str, ek: bytes, integ: str | None, ak: bytes) -> tuple[int, bytes]:
    """(first inner payload type, inner payload bytes) of a message whose only payload is SK (46) or
    SKF (53, RFC 7383: fragment number and total precede the IV and belong to the associated data)."""
    assert msg[16] in (46, 53), "expected an SK or SKF payload right after the header"
    first = msg[28]
    (plen,) = struct.unpack_from("!H", msg, 30)
    assert 28 + plen == len(msg)
    start = 32 if msg[16] == 46 else 36
    body = msg[start:]
    if encr in ("aes-gcm-16", "chacha20-poly1305"):
        key, salt = ek[:-4], ek[-4:]
        aead = AESGCM(key) if encr == "aes-gcm-16" else ChaCha20Poly1305(key)
        padded = aead.decrypt(salt + body[:8], body[8:], msg[:start])
    else:
        assert integ is not None
        h, icv_len = HASH[integ]
        assert len(ak) == hashlib.new(h).digest_size
        icv = hmac.new(ak, msg[:-icv_len], h).digest()[:icv_len]
        assert hmac.compare_digest(icv, msg[-icv_len:])
        dec = Cipher(algorithms.AES(ek), modes.CBC(body[:16])).decryptor()
        padded = dec.update(body[16:-icv_len]) + dec.finalize()
    return first, padded[: -(padded[-1] + 1)]


Keys = dict[bytes, tuple[IkeKeys, IkeProposal]]


def remember_keys(net: Net, keys: Keys | None = None) -> Keys:
    """The SK keys of every IKE SA the two engines hold now, by SPIi (call it while they live)."""
    keys = {} if keys is None else keys
    for e in (net.i.engine, net.r.engine):
        if e is not None:
            for sa in e._sas.values():
                if sa.keys is not None and sa.proposal is not None and sa.spi_r != bytes(8):
                    keys[sa.spi_i] = (sa.keys, sa.proposal)
    return keys


class KeyLog:
    """A `drop` for `Net` that loses nothing and records the keys of every IKE SA as its datagrams
    pass, so messages of SAs that have ended since can still be opened. Set `net` after building it."""

    def __init__(self) -> None:
        self.net: Net | None = None
        self.keys: Keys = {}

    def __call__(self, n: int, dg: object) -> bool:
        if self.net is not None:
            remember_keys(self.net, self.keys)
        return False


def messages(net: Net, keys: Keys, exchange: int | None = None) -> list[tuple[str, int, bool, list[Payload]]]:
    """(sender "i"/"r", exchange, is a response, payloads) of every message on the wire, SK opened and
    SKF fragments reassembled; retransmissions appear again."""
    out: list[tuple[str, int, bool, list[Payload]]] = []
    parts: dict[tuple[object, ...], dict[int, tuple[int, bytes]]] = {}
    for side, dg in net.wire:
        data = dg.data
        h, outer = decode_outer(data)
        if exchange is not None and h.exchange != exchange:
            continue
        if data[16] not in (46, 53):
            out.append((side, h.exchange, h.is_response, outer))
            continue
        k, prop = keys[h.spi_i]
        ek, ak = (k.sk_ei, k.sk_ai) if h.flags & 0x08 else (k.sk_er, k.sk_ar)
        first, inner = sk_open(data, prop.encr, ek, prop.integ, ak)
        if data[16] == 46:
            out.append((side, h.exchange, h.is_response, decode_chain(first, inner)))
            continue
        num, total = struct.unpack_from("!HH", data, 32)
        got = parts.setdefault((side, h.spi_i, h.msg_id, h.is_response), {})
        got[num] = (first, inner)
        if len(got) == total:
            whole = b"".join(got[i][1] for i in range(1, total + 1))
            out.append((side, h.exchange, h.is_response, decode_chain(got[1][0], whole)))
            got.clear()
    return out


Edit = Callable[[list[Payload]], list[Payload]]


def tamper(net: Net, to: str, exchange: int, response: bool, edit: Edit) -> list[list[Payload]]:
    """Rewrite the next message of `exchange` (a request, or a response) on its way to side `to`
    ("i" or "r"): `edit` gets its payloads and returns the ones to send. An SK message is opened
    with `sk_open` and sealed again with the sender's own keys, so it arrives intact but altered, as
    from a peer that built it so. Returns the list of edited messages' original payloads (empty
    until it has happened)."""
    sender = net.i if to == "r" else net.r
    deliver = net.deliver_to_r if to == "r" else net.deliver_to_i
    seen: list[list[Payload]] = []

    def hook(dg: Datagram) -> None:
        h, outer = decode_outer(dg.data)
        if seen or h.exchange != exchange or h.is_response != response:
            deliver(dg)
            return
        if dg.data[16] != 46:
            assert dg.data[16] != 53, "tamper() needs unfragmented messages (fragment_size=0)"
            seen.append(outer)
            deliver(Datagram(encode_plain(h, edit(list(outer))), dg.local, dg.remote))
            return
        assert sender.engine is not None
        from_i = bool(h.flags & 0x08)
        sa = sender.engine._sas[h.spi_i if from_i else h.spi_r]
        assert sa.keys is not None and sa.proposal is not None and sa.out is not None
        ek, ak = (sa.keys.sk_ei, sa.keys.sk_ai) if from_i else (sa.keys.sk_er, sa.keys.sk_ar)
        first, inner = sk_open(dg.data, sa.proposal.encr, ek, sa.proposal.integ, ak)
        payloads = decode_chain(first, inner)
        seen.append(payloads)
        first, inner = encode_chain(edit(list(payloads)))
        deliver(Datagram(sa.out.seal(h, first, inner), dg.local, dg.remote))

    if to == "r":
        net.deliver_to_r = hook  # type: ignore[method-assign]
    else:
        net.deliver_to_i = hook  # type: ignore[method-assign]
    return seen
