"""IKEv1 key derivation (RFC 2409 §5, §5.5, appendix B).

- SKEYID: signatures prf(Ni_b | Nr_b, g^xy); pre-shared keys prf(psk, Ni_b | Nr_b).
- SKEYID_d/a/e chained from SKEYID with g^xy, the cookies and 0/1/2.
- The phase 1 cipher key: SKEYID_e, expanded by K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1) when
  SKEYID_e is too short (appendix B).
- IVs: phase 1 starts from hash(g^xi | g^xr); each later exchange (quick mode, informational) starts
  from hash(last phase 1 CBC block | M-ID); inside an exchange the IV is the previous message's last
  ciphertext block (`IvChain`).
- Quick mode KEYMAT = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), expanded as
  K1 | K2 | ... with Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b).

"prf" is the HMAC of the negotiated hash (transforms.PRF name); "hash" the bare hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.proto.crypto import hash_bytes, prf
from ike.proto.transforms import PRF


def skeyid_psk(prf_name: str, psk: bytes, ni: bytes, nr: bytes) -> bytes:
    return prf(prf_name, psk, ni + nr)


def skeyid_sig(prf_name: str, ni: bytes, nr: bytes, gxy: bytes) -> bytes:
    return prf(prf_name, ni + nr, gxy)


@dataclass(frozen=True)
class SkeyIds:
    skeyid: bytes
    d: bytes
    a: bytes
    e: bytes


def derive_skeyids(prf_name: str, skeyid: bytes, gxy: bytes, cky_i: bytes, cky_r: bytes) -> SkeyIds:
    d = prf(prf_name, skeyid, gxy + cky_i + cky_r + b"\x00")
    a = prf(prf_name, skeyid, d + gxy + cky_i + cky_r + b"\x01")
    e = prf(prf_name, skeyid, a + gxy + cky_i + cky_r + b"\x02")
    return SkeyIds(skeyid, d, a, e)


def encryption_key(prf_name: str, skeyid_e: bytes, length: int) -> bytes:
    """Appendix B: SKEYID_e truncated, or expanded when the cipher needs more."""
    if len(skeyid_e) >= length:
        return skeyid_e[:length]
    out = bytearray()
    k = prf(prf_name, skeyid_e, b"\x00")
    out += k
    while len(out) < length:
        k = prf(prf_name, skeyid_e, k)
        out += k
    return bytes(out[:length])


def phase1_iv(prf_name: str, gxi: bytes, gxr: bytes, block_size: int) -> bytes:
    return hash_bytes(PRF[prf_name].hash, gxi + gxr)[:block_size]


def exchange_iv(prf_name: str, last_phase1_block: bytes, message_id: int, block_size: int) -> bytes:
    return hash_bytes(PRF[prf_name].hash, last_phase1_block + message_id.to_bytes(4, "big"))[:block_size]


def keymat(
    prf_name: str, skeyid_d: bytes, protocol: int, spi: bytes, ni: bytes, nr: bytes, length: int, gxy: bytes = b""
) -> bytes:
    seed = gxy + bytes([protocol]) + spi + ni + nr
    out = bytearray()
    k = b""
    while len(out) < length:
        k = prf(prf_name, skeyid_d, k + seed)
        out += k
    return bytes(out[:length])


@dataclass
class IvChain:
    """The CBC IV state of one ISAKMP SA: the phase 1 chain and one chain per message ID.

    IVs advance only when a message has been accepted (its HASH checked), so that garbage or a
    forged packet cannot desynchronise the SA."""

    prf_name: str
    block_size: int
    phase1: bytes
    per_message: dict[int, bytes] = field(default_factory=dict)

    def get(self, message_id: int) -> bytes:
        if message_id == 0:
            return self.phase1
        iv = self.per_message.get(message_id)
        if iv is None:
            iv = exchange_iv(self.prf_name, self.phase1, message_id, self.block_size)
        return iv

    def advance(self, message_id: int, ciphertext: bytes) -> None:
        last = ciphertext[-self.block_size :]
        if message_id == 0:
            self.phase1 = last
        else:
            self.per_message[message_id] = last
            if len(self.per_message) > 256:  # finished exchanges; keep memory bounded
                self.per_message.pop(next(iter(self.per_message)))

    def forget(self, message_id: int) -> None:
        self.per_message.pop(message_id, None)
