"""IKEv2 key derivation (RFC 7296 §2.13, §2.14, §2.17, §2.18).

SKEYSEED = prf(Ni | Nr, g^ir)                          (new IKE SA)
SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)        (rekeyed IKE SA)
{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)            (child SA; initiator->responder keys first)
"""

from __future__ import annotations

from typing import NamedTuple

from ike.policy import EspProposal, IkeProposal
from ike.proto.crypto import prf, prf_plus
from ike.proto.transforms import ENCR, INTEG, PRF
from ike.proto.v2.payloads.sk import SkCipher


class IkeKeys(NamedTuple):
    """Immutable; a named tuple, which is cheaper to build than a frozen dataclass."""

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def ciphers(self, p: IkeProposal, initiator: bool) -> tuple[SkCipher, SkCipher]:
        """(outbound, inbound) SK ciphers for the side that is the SA's initiator or not."""
        i = SkCipher(p.encr, self.sk_ei, p.integ, self.sk_ai)
        r = SkCipher(p.encr, self.sk_er, p.integ, self.sk_ar)
        return (i, r) if initiator else (r, i)


def skeyseed(prf_name: str, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    return prf(prf_name, ni + nr, g_ir)


def skeyseed_rekey(prf_name: str, old_sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes) -> bytes:
    return prf(prf_name, old_sk_d, g_ir + ni + nr)


def ike_key_lengths(p: IkeProposal) -> tuple[int, int, int]:
    """(integrity key, encryption key material incl. salt, PRF key) lengths in bytes."""
    e = ENCR[p.encr]
    integ = INTEG[p.integ].key_len if p.integ else 0
    return integ, e.key_material_len(p.encr_keylen), PRF[p.prf].key_len


def derive_ike_keys(p: IkeProposal, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    a, e, pk = ike_key_lengths(p)
    km = prf_plus(p.prf, seed, ni + nr + spi_i + spi_r, pk + 2 * a + 2 * e + 2 * pk)
    # {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}, split at the running offsets
    o1 = pk
    o2 = o1 + a
    o3 = o2 + a
    o4 = o3 + e
    o5 = o4 + e
    o6 = o5 + pk
    return IkeKeys(km[:o1], km[o1:o2], km[o2:o3], km[o3:o4], km[o4:o5], km[o5:o6], km[o6 : o6 + pk])


class ChildKeys(NamedTuple):
    encr_i: bytes  # initiator -> responder (includes the AEAD salt)
    integ_i: bytes
    encr_r: bytes  # responder -> initiator
    integ_r: bytes


def derive_child_keys(
    prf_name: str, sk_d: bytes, p: EspProposal, ni: bytes, nr: bytes, g_ir: bytes = b"", ah: bool = False
) -> ChildKeys:
    e = 0 if ah else ENCR[p.encr].key_material_len(p.encr_keylen)
    a = INTEG[p.integ].key_len if p.integ else 0
    km = prf_plus(prf_name, sk_d, g_ir + ni + nr, 2 * (e + a))
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])
