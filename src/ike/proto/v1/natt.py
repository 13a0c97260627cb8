"""NAT traversal for IKEv1 (RFC 3947) and the vendor IDs that announce it and DPD (RFC 3706).

NAT-D = HASH(CKY-I | CKY-R | IP | port) with the negotiated hash. The first NAT-D a side sends is
the peer's address as the sender sees it, the rest are the sender's own addresses; a mismatch on
our own address means we are behind a NAT, on the peer's that the peer is.
"""

from __future__ import annotations

import functools
import ipaddress

from ike.proto.crypto import hash_bytes
from ike.proto.transforms import PRF

VID_NATT_RFC3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")
VID_NATT_DRAFTS = frozenset(
    bytes.fromhex(h)
    for h in (
        "4485152d18b6bbcd0be8a8469579ddcc",  # draft-ietf-ipsec-nat-t-ike-00
        "16f6ca16e4a4066d83821a0f0aeaa862",  # draft-ietf-ipsec-nat-t-ike-01
        "cd60464335df21f87cfdb2fc68b6a448",  # draft-ietf-ipsec-nat-t-ike-02
        "90cb80913ebb696e086381b5ec427b1f",  # draft-ietf-ipsec-nat-t-ike-02\n
        "7d9419a65310ca6f2c179d9215529d56",  # draft-ietf-ipsec-nat-t-ike-03
    )
)
VID_NATT_DRAFT02N = bytes.fromhex("90cb80913ebb696e086381b5ec427b1f")
VID_DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")

NATT_NONE, NATT_DRAFT, NATT_RFC = 0, 1, 2

IKE_PORT, NATT_PORT = 500, 4500


def our_vendor_ids() -> list[bytes]:
    return [VID_NATT_RFC3947, VID_NATT_DRAFT02N, VID_DPD]


def natt_from_vids(vids: list[bytes]) -> int:
    if VID_NATT_RFC3947 in vids:
        return NATT_RFC
    if any(v in VID_NATT_DRAFTS for v in vids):
        return NATT_DRAFT
    return NATT_NONE


def has_dpd(vids: list[bytes]) -> bool:
    return any(v[:14] == VID_DPD[:14] for v in vids if len(v) == 16)


def natd_hash(prf_name: str, cky_i: bytes, cky_r: bytes, ip: str, port: int) -> bytes:
    return hash_bytes(PRF[prf_name].hash, cky_i + cky_r + _packed(ip) + port.to_bytes(2, "big"))


# Our addresses and the peers' come back in every negotiation (four NAT-D hashes each): parse each once.
@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed
