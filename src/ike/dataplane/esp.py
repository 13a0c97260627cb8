"""ESP (RFC 4303) packet transform for one SA, sans-IO: bytes in, bytes out, counters and limits.

An `EspSa` is built once per SA: the cipher objects, the HMAC template, the header/trailer tables and
the replay state all live on it, so the per-packet work is a counter, a few slices and one AEAD call
(or one CBC + one HMAC). Tunnel mode only adds the next-header value (4 = IPv4, 41 = IPv6); the inner
packet is carried whole. Transport mode passes the transport payload and its protocol as the next
header (the IP header is taken off and put back by transport.py).

AEAD ciphers (AES-GCM RFC 4106, ChaCha20-Poly1305 RFC 7634) use the 64-bit sequence number as the
explicit IV, which is unique per key as both RFCs require. AES-CBC (RFC 3602) takes a fresh random IV
per packet. With ESN (RFC 4303 §2.2.1, appendix A) the high 32 bits are in the AAD (RFC 4106 §5) or
appended for the ICV, and the receiver infers them from its replay window.
"""

from __future__ import annotations

import hmac as _hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ike.proto.transforms import ENCR, INTEG

__all__ = [
    "EspError",
    "EspSa",
    "IntegrityError",
    "Lifetime",
    "PaddingError",
    "ReplayError",
    "SaExpiredError",
    "esp_overhead",
]

NH_IPV4 = 4
NH_IPV6 = 41

_HDR = struct.Struct(">II")  # SPI, sequence number (low 32 bits)
_HDR_IV = struct.Struct(">IIQ")  # SPI, seq low, 64-bit IV (= full sequence number)
_U32 = struct.Struct(">I")
_SEQ32_MAX = 0xFFFFFFFF
_SEQ64_MAX = 0xFFFFFFFFFFFFFFFF
_NO_LIMIT = 1 << 64
# RFC 4303 §2.4: padding bytes are 1, 2, 3, ...; index by pad length.
_PAD = tuple(bytes(range(1, n + 1)) for n in range(256))

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class EspError(ValueError):
    """A packet this SA refuses; the message says which check failed."""


class IntegrityError(EspError):
    pass


class ReplayError(EspError):
    pass


class PaddingError(EspError):
    pass


class SaExpiredError(EspError):
    """The SA reached a hard limit (bytes, packets, time, or sequence number exhaustion)."""


@dataclass(frozen=True)
class Lifetime:
    """Soft limits ask for a rekey, hard limits end the SA. 0 = no limit."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0
    soft_s: float = 0.0
    hard_s: float = 0.0

    @classmethod
    def from_negotiated(
        cls,
        lifetime_s: int,
        lifetime_kb: int,
        soft_fraction: float = 0.9,
        *,
        esn: bool = False,
        seq_space: int | None = None,
    ) -> Lifetime:
        """Soft at `soft_fraction` of each negotiated limit, hard at the limit itself.

        Packets are always limited: an SA must not cycle its sequence number (RFC 4303 §3.3.3), so
        the hard packet limit is the sequence space (2^32 - 1 packets without ESN, 2^64 - 1 with)
        and the soft one asks for the rekey at `soft_fraction` of it, well before traffic would
        stop. `seq_space` replaces the space (tests)."""
        hard_b = lifetime_kb * 1024
        hard_p = seq_space if seq_space is not None else _SEQ64_MAX if esn else _SEQ32_MAX
        # int(hard_p * soft_fraction) in exact arithmetic: a float loses the low bits of 2^64
        soft_p = hard_p * round(soft_fraction * 1000) // 1000
        return cls(
            soft_bytes=int(hard_b * soft_fraction),
            hard_bytes=hard_b,
            soft_packets=min(max(soft_p, 1), hard_p - 1) if hard_p > 1 else 0,
            hard_packets=hard_p,
            soft_s=lifetime_s * soft_fraction if lifetime_s else 0.0,
            hard_s=float(lifetime_s),
        )


def esp_overhead(encr: str, integ: str | None, outer_v6: bool, udp_encap: bool) -> int:
    """Worst-case bytes ESP adds to an inner packet (outer IP + UDP + ESP header, IV, padding, ICV)."""
    e = ENCR[encr]
    icv = e.icv_size if e.aead else INTEG[integ].icv_len if integ else 0
    return (40 if outer_v6 else 20) + (8 if udp_encap else 0) + 8 + e.iv_size + max(e.block_size, 4) - 1 + 2 + icv


class EspSa:
    """One direction of one ESP SA. Use `encapsulate` on outbound SAs and `decapsulate` on inbound ones.

    `enc_key` includes the AEAD salt at its end (as ChildSaKeys carries it). `on_limit(kind)` is called
    once when a soft or hard byte/packet limit is crossed ("soft" | "hard"); the flags `soft_expired` /
    `hard_expired` say the same. Time limits are checked by `check_time(now)`, which the owner calls
    from a timer (never per packet).
    """

    def __init__(
        self,
        spi: int | bytes,
        encr: str,
        keylen: int,
        enc_key: bytes,
        integ: str | None = None,
        integ_key: bytes = b"",
        *,
        esn: bool = False,
        replay_window: int = 64,
        lifetime: Lifetime | None = None,
        now: float = 0.0,
        on_limit: Callable[[str], None] | None = None,
    ) -> None:
        self.spi = int.from_bytes(spi, "big") if isinstance(spi, bytes) else spi
        if not 256 <= self.spi <= _SEQ32_MAX:
            raise EspError(f"SPI {self.spi:#x} is reserved (RFC 4303 §2.1: 1-255 are reserved, 0 is never used)")
        if encr not in ENCR:
            raise EspError(f"unknown ESP encryption {encr!r}; known: {', '.join(sorted(ENCR))}")
        e = ENCR[encr]
        if keylen not in e.key_lengths:
            raise EspError(f"{encr} takes key lengths {e.key_lengths}, not {keylen}")
        if len(enc_key) != e.key_material_len(keylen):
            raise EspError(
                f"{encr}-{keylen} needs {e.key_material_len(keylen)} bytes of encryption key material "
                f"(key{' + salt' if e.salt_size else ''}), got {len(enc_key)}"
            )
        if replay_window < 0 or replay_window > 4096:
            raise EspError(f"replay window {replay_window} is outside 0-4096")
        self.encr, self.keylen, self.integ, self.esn = encr, keylen, integ, esn
        self.replay_window = replay_window
        self._spi_b = self.spi.to_bytes(4, "big")
        self._aead = e.aead
        self._iv_size = e.iv_size
        self._block = max(e.block_size, 4)
        # (next header, pad length) -> trailer bytes; built once (tunnel mode, dummy, and the transport
        # mode payloads ICMP, TCP, UDP, ICMPv6).
        self._trailers: dict[int, tuple[bytes, ...]] = {
            nh: tuple(_PAD[p] + bytes((p, nh)) for p in range(self._block))
            for nh in (NH_IPV4, NH_IPV6, 59, 1, 6, 17, 58)
        }
        key = enc_key[: keylen // 8]
        self._aead_obj: AESGCM | ChaCha20Poly1305 | None = None
        self._cbc_alg: Any = None
        self._hmac: c_hmac.HMAC | None = None
        self._icv_len = 0
        if e.aead:
            if integ is not None:
                raise EspError(f"{encr} is an AEAD cipher: no separate integrity algorithm")
            self._salt = enc_key[keylen // 8 :]
            self._aead_obj = AESGCM(key) if encr.startswith("aes-gcm") else ChaCha20Poly1305(key)
            self._icv_len = e.icv_size
        else:
            if integ is None or integ not in INTEG:
                raise EspError(f"{encr} needs an integrity algorithm, one of {', '.join(sorted(INTEG))}")
            it = INTEG[integ]
            if len(integ_key) != it.key_len:
                raise EspError(f"{integ} needs a {it.key_len}-byte key, got {len(integ_key)}")
            self._salt = b""
            if encr == "aes-cbc":
                self._cbc_alg = algorithms.AES(key)
            elif encr == "3des-cbc":
                from ike.proto.crypto import TripleDES

                self._cbc_alg = TripleDES(key)
            else:
                raise EspError(f"{encr} is not supported by the userspace ESP transform")
            self._hmac = c_hmac.HMAC(integ_key, _HASHES[it.hash]())
            self._icv_len = it.icv_len
        # Smallest valid ESP packet: header, IV, one block of payload (trailer), ICV.
        self._min_len = 8 + self._iv_size + self._block + self._icv_len

        # outbound state
        self._seq = 0
        self._seq_max = _SEQ64_MAX if esn else _SEQ32_MAX
        # inbound state: highest sequence number seen and bitmap (bit i = top - i received)
        self._top = 0
        self._bitmap = 0
        self._wmask = (1 << replay_window) - 1 if replay_window else 0

        # counters and limits
        self.bytes = 0
        self.packets = 0
        self.created = now
        self.last_used: float | None = None
        self.lifetime = lifetime or Lifetime()
        self.soft_expired = False
        self.hard_expired = False
        self.on_limit = on_limit
        self._limit_bytes = _NO_LIMIT
        self._limit_packets = _NO_LIMIT
        self._arm_limits()

    # -- limits ------------------------------------------------------------------------------------

    def _arm_limits(self) -> None:
        lt = self.lifetime
        if self.hard_expired:
            self._limit_bytes = self._limit_packets = 0
            return
        sb = lt.soft_bytes if lt.soft_bytes and not self.soft_expired else 0
        sp = lt.soft_packets if lt.soft_packets and not self.soft_expired else 0
        self._limit_bytes = min(x for x in (sb, lt.hard_bytes, _NO_LIMIT) if x)
        self._limit_packets = min(x for x in (sp, lt.hard_packets, _NO_LIMIT) if x)

    def _crossed(self) -> None:
        """Counters reached a limit: decide which, flag it, tell the owner once."""
        lt = self.lifetime
        hard = (lt.hard_bytes and self.bytes >= lt.hard_bytes) or (lt.hard_packets and self.packets >= lt.hard_packets)
        if hard:
            self._expire("hard")
        else:
            self._expire("soft")

    def _expire(self, kind: str) -> None:
        if kind == "hard":
            if self.hard_expired:
                return
            self.hard_expired = True
        else:
            if self.soft_expired or self.hard_expired:
                return
            self.soft_expired = True
        self._arm_limits()
        if self.on_limit is not None:
            self.on_limit(kind)

    def check_time(self, now: float) -> str | None:
        """Fire time limits that have passed; returns "hard", "soft" or None (what fired now)."""
        lt, age = self.lifetime, now - self.created
        if lt.hard_s and age >= lt.hard_s and not self.hard_expired:
            self._expire("hard")
            return "hard"
        if lt.soft_s and age >= lt.soft_s and not self.soft_expired and not self.hard_expired:
            self._expire("soft")
            return "soft"
        return None

    def next_time_limit(self) -> float | None:
        """When `check_time` next has something to do (absolute, same clock as `now`), or None."""
        lt = self.lifetime
        if self.hard_expired:
            return None
        if lt.soft_s and not self.soft_expired:
            return self.created + lt.soft_s
        if lt.hard_s:
            return self.created + lt.hard_s
        return None

    # -- outbound ----------------------------------------------------------------------------------

    def encapsulate(self, inner: bytes | bytearray | memoryview, next_header: int) -> bytes:
        """The ESP packet (header, IV, ciphertext, ICV) for one inner packet."""
        seq = self._seq + 1
        if seq > self._seq_max:
            # RFC 4303 §3.3.3: the sequence number must not cycle; the SA must be rekeyed.
            self._expire("hard")
            raise SaExpiredError(f"SPI {self.spi:#010x}: sequence number space exhausted")
        if self.hard_expired:
            raise SaExpiredError(f"SPI {self.spi:#010x} has expired (hard lifetime)")
        n = len(inner)
        try:
            trailer = self._trailers[next_header][-(n + 2) % self._block]
        except KeyError:
            trailer = _PAD[-(n + 2) % self._block] + bytes((-(n + 2) % self._block, next_header))
        self._seq = seq
        lo = seq & _SEQ32_MAX
        aead = self._aead_obj
        if aead is not None:
            hdr_iv = _HDR_IV.pack(self.spi, lo, seq)
            aad = self._spi_b + _U32.pack(seq >> 32) + hdr_iv[4:8] if self.esn else hdr_iv[:8]
            out = hdr_iv + aead.encrypt(self._salt + hdr_iv[8:], bytes(inner) + trailer, aad)
        else:
            iv = os.urandom(self._iv_size)
            enc = Cipher(self._cbc_alg, modes.CBC(iv)).encryptor()
            ct = enc.update(bytes(inner) + trailer) + enc.finalize()
            body = _HDR.pack(self.spi, lo) + iv + ct
            assert self._hmac is not None
            h = self._hmac.copy()
            h.update(body)
            if self.esn:
                h.update(_U32.pack(seq >> 32))
            out = body + h.finalize()[: self._icv_len]
        self.bytes += n
        self.packets += 1
        if self.bytes >= self._limit_bytes or self.packets >= self._limit_packets:
            self._crossed()
        return out

    # -- inbound -----------------------------------------------------------------------------------

    def _infer_seq(self, lo: int) -> int:
        """The full sequence number for a received low half (RFC 4303 appendix A2.2)."""
        if not self.esn:
            return lo
        w = self.replay_window or 1
        top = self._top
        tl, th = top & _SEQ32_MAX, top >> 32
        if tl >= w - 1:  # case A: the window lies within one 2^32 epoch
            if lo < tl - w + 1:
                th += 1  # ahead of the window: the next epoch
        elif lo >= (tl - w + 1) & _SEQ32_MAX and th:  # case B: window spans the boundary
            th -= 1  # a late packet from the previous epoch
        return (th << 32) | lo

    def _replay_check(self, seq: int) -> None:
        if seq == 0:
            raise ReplayError(f"SPI {self.spi:#010x}: sequence number 0 is never sent (RFC 4303 §3.3.3)")
        if not self._wmask:
            return
        top = self._top
        if seq > top:
            return
        off = top - seq
        if off >= self.replay_window:
            raise ReplayError(f"SPI {self.spi:#010x}: sequence number {seq} is left of the replay window (top {top})")
        if (self._bitmap >> off) & 1:
            raise ReplayError(f"SPI {self.spi:#010x}: sequence number {seq} was already received (replay)")

    def decapsulate(self, esp: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        """Verify and decrypt one ESP packet (starting at the SPI): (next header, inner packet).
        Raises IntegrityError, ReplayError, PaddingError, SaExpiredError or EspError (malformed)."""
        if self.hard_expired:
            raise SaExpiredError(f"SPI {self.spi:#010x} has expired (hard lifetime)")
        n = len(esp)
        if n < self._min_len:
            raise EspError(f"SPI {self.spi:#010x}: ESP packet of {n} bytes is shorter than the minimum {self._min_len}")
        spi, lo = _HDR.unpack_from(esp)
        if spi != self.spi:
            raise EspError(f"packet SPI {spi:#010x} is not this SA's {self.spi:#010x}")
        esn = self.esn
        seq = self._infer_seq(lo) if esn else lo
        top = self._top
        if seq <= top or not seq:  # the common in-order case needs no window look-up
            self._replay_check(seq)
        mv = esp if isinstance(esp, memoryview) else memoryview(esp)
        aead = self._aead_obj
        if aead is not None:
            # both AEAD transforms here carry an 8-byte IV
            aad = self._spi_b + _U32.pack(seq >> 32) + bytes(mv[4:8]) if esn else bytes(mv[:8])
            try:
                pt = aead.decrypt(self._salt + bytes(mv[8:16]), mv[16:], aad)
            except InvalidTag:
                raise IntegrityError(f"SPI {self.spi:#010x}: ICV check failed (wrong key or altered packet)") from None
        else:
            ivs = self._iv_size
            icv_at = n - self._icv_len
            ct_len = icv_at - 8 - ivs
            if ct_len % self._block:
                raise EspError(f"SPI {self.spi:#010x}: ciphertext length {ct_len} is not a multiple of {self._block}")
            assert self._hmac is not None
            h = self._hmac.copy()
            h.update(mv[:icv_at])
            if esn:
                h.update(_U32.pack(seq >> 32))
            if not _hmac.compare_digest(h.finalize()[: self._icv_len], bytes(mv[icv_at:])):
                raise IntegrityError(f"SPI {self.spi:#010x}: ICV check failed (wrong key or altered packet)")
            dec = Cipher(self._cbc_alg, modes.CBC(bytes(mv[8 : 8 + ivs]))).decryptor()
            pt = dec.update(mv[8 + ivs : icv_at]) + dec.finalize()
        padlen = pt[-2]
        end = len(pt) - 2 - padlen
        if end < 0:
            raise PaddingError(f"SPI {self.spi:#010x}: pad length {padlen} exceeds the payload ({len(pt)} bytes)")
        if padlen and pt[end:-2] != _PAD[padlen]:
            raise PaddingError(f"SPI {self.spi:#010x}: padding bytes are not 1, 2, 3, ... (RFC 4303 §2.4)")
        # the packet is authentic: only now move the window (RFC 4303 §3.4.3)
        if seq > top:
            if self._wmask:
                self._bitmap = ((self._bitmap << (seq - top)) | 1) & self._wmask
            self._top = seq
        elif self._wmask:
            self._bitmap |= 1 << (top - seq)
        self.bytes += end
        self.packets += 1
        if self.bytes >= self._limit_bytes or self.packets >= self._limit_packets:
            self._crossed()
        return pt[-1], pt[:end]

    def peek_seq(self) -> int:
        """The last sequence number sent (outbound) or the highest received (inbound)."""
        return self._seq or self._top
