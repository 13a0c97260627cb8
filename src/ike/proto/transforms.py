"""Every algorithm ike knows, in one table that IKEv1, IKEv2, the database and the data plane all read.

Names here are the names used in the database, the XML and the listings. Wire numbers:
IKEv2 transform IDs (RFC 7296 §3.3.2, IANA "IKEv2 Parameters"); IKEv1 phase 1 attribute values
(RFC 2409 appendix A, RFC 3602, RFC 4868); IPsec DOI ESP transform IDs and auth algorithm
attributes (RFC 2407 §4.4.4 and §4.5, RFC 4106, RFC 4868). None means "not defined for that version".

`weak` marks the entries kept for old peers only (MODP-1024/1536, 3DES, MD5; RFC 8247 says not to use
them). They are used only when a definition names them, because nothing is ever proposed by default:
the database, the XML and the policy model hold exactly the proposals an administrator wrote, and the
engines offer and accept only those. So the checks below do not refuse weak entries and no code reads
the flag to decide anything; it records which entries docs/database.md lists as weak.
"""

from __future__ import annotations

from dataclasses import dataclass

from ike.policy import EspProposal, IkeProposal, PolicyError


@dataclass(frozen=True)
class Encr:
    name: str
    v2_id: int | None
    v1_ike_id: int | None  # phase 1 Encryption Algorithm attribute
    v1_esp_id: int | None  # IPsec DOI ESP transform ID
    key_lengths: tuple[int, ...]  # bits, cipher key only (without salt)
    keylen_attr: bool  # the Key Length attribute is sent (variable-length ciphers)
    aead: bool
    block_size: int  # bytes; padding alignment (1 for stream/AEAD-with-counter ciphers, ESP pads to 4)
    iv_size: int  # explicit IV bytes on the wire
    icv_size: int  # AEAD tag bytes (0 for non-AEAD)
    salt_size: int  # bytes of keying material beyond the cipher key (RFC 4106 / RFC 7634 salt)
    weak: bool = False

    def key_material_len(self, keylen_bits: int) -> int:
        return keylen_bits // 8 + self.salt_size


@dataclass(frozen=True)
class Integ:
    name: str
    v2_id: int | None
    v1_hash_id: int | None  # phase 1 Hash Algorithm attribute (HMAC of it is phase 1 integrity)
    v1_auth_id: int | None  # IPsec DOI Authentication Algorithm attribute (ESP/AH)
    hash: str  # hashlib / cryptography hash name
    key_len: int  # bytes
    icv_len: int  # truncated output bytes
    weak: bool = False


@dataclass(frozen=True)
class Prf:
    name: str
    v2_id: int | None
    v1_hash_id: int | None  # the IKEv1 Hash Algorithm whose HMAC is the phase 1 PRF
    hash: str
    out_len: int
    key_len: int  # preferred key length (IKEv2 §2.13: SK_d etc. are this long)
    weak: bool = False


@dataclass(frozen=True)
class DhGroup:
    number: int
    name: str
    kind: str  # modp | ecp | x25519 | x448
    public_len: int  # bytes of the KE payload's key exchange data
    weak: bool = False


ENCR: dict[str, Encr] = {
    e.name: e
    for e in (
        Encr("aes-cbc", 12, 7, 12, (128, 192, 256), True, False, 16, 16, 0, 0),
        Encr("aes-gcm-16", 20, None, 20, (128, 192, 256), True, True, 4, 8, 16, 4),
        Encr("chacha20-poly1305", 28, None, None, (256,), False, True, 4, 8, 16, 4),
        Encr("3des-cbc", 3, 5, 3, (192,), False, False, 8, 8, 0, 0, weak=True),
    )
}

INTEG: dict[str, Integ] = {
    i.name: i
    for i in (
        Integ("hmac-sha1-96", 2, 2, 2, "sha1", 20, 12),
        Integ("hmac-sha2-256-128", 12, 4, 5, "sha256", 32, 16),
        Integ("hmac-sha2-384-192", 13, 5, 6, "sha384", 48, 24),
        Integ("hmac-sha2-512-256", 14, 6, 7, "sha512", 64, 32),
        Integ("hmac-md5-96", 1, 1, 1, "md5", 16, 12, weak=True),
    )
}

PRF: dict[str, Prf] = {
    p.name: p
    for p in (
        Prf("hmac-sha1", 2, 2, "sha1", 20, 20),
        Prf("hmac-sha2-256", 5, 4, "sha256", 32, 32),
        Prf("hmac-sha2-384", 6, 5, "sha384", 48, 48),
        Prf("hmac-sha2-512", 7, 6, "sha512", 64, 64),
        Prf("hmac-md5", 1, 1, "md5", 16, 16, weak=True),
    )
}

DH: dict[int, DhGroup] = {
    g.number: g
    for g in (
        DhGroup(2, "modp1024", "modp", 128, weak=True),
        DhGroup(5, "modp1536", "modp", 192, weak=True),
        DhGroup(14, "modp2048", "modp", 256),
        DhGroup(15, "modp3072", "modp", 384),
        DhGroup(16, "modp4096", "modp", 512),
        DhGroup(19, "ecp256", "ecp", 64),
        DhGroup(20, "ecp384", "ecp", 96),
        DhGroup(21, "ecp521", "ecp", 132),
        DhGroup(31, "curve25519", "x25519", 32),
        DhGroup(32, "curve448", "x448", 56),
    )
}

# The IKEv1 phase 1 integrity and PRF are both HMAC of one Hash Algorithm: these pair them.
INTEG_FOR_PRF: dict[str, str] = {
    "hmac-sha1": "hmac-sha1-96",
    "hmac-sha2-256": "hmac-sha2-256-128",
    "hmac-sha2-384": "hmac-sha2-384-192",
    "hmac-sha2-512": "hmac-sha2-512-256",
    "hmac-md5": "hmac-md5-96",
}


def by_v2_id(table: dict[str, Encr] | dict[str, Integ] | dict[str, Prf], ident: int) -> str | None:
    for name, t in table.items():
        if t.v2_id == ident:
            return name
    return None


def _need(table: dict[str, object], name: str, what: str) -> None:
    if name not in table:
        raise PolicyError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}")


def check_ike_proposal(p: IkeProposal, version: int) -> None:
    """Raise PolicyError naming the first thing in `p` that cannot be negotiated with `version`."""
    _need(ENCR, p.encr, "encryption algorithm")  # type: ignore[arg-type]
    e = ENCR[p.encr]
    if p.encr_keylen not in e.key_lengths:
        raise PolicyError(f"{p.encr} takes key lengths {e.key_lengths}, not {p.encr_keylen}")
    if (e.v2_id if version == 2 else e.v1_ike_id) is None:
        raise PolicyError(f"{p.encr} is not defined for IKEv{version} phase 1")
    _need(PRF, p.prf, "PRF")  # type: ignore[arg-type]
    if p.dh not in DH:
        raise PolicyError(f"unknown DH group {p.dh}; known: {', '.join(map(str, sorted(DH)))}")
    if e.aead:
        if p.integ is not None:
            raise PolicyError(f"{p.encr} is an AEAD cipher: leave integrity empty")
    else:
        if p.integ is None:
            raise PolicyError(f"{p.encr} needs an integrity algorithm")
        _need(INTEG, p.integ, "integrity algorithm")  # type: ignore[arg-type]
    if version == 1 and p.integ is not None and INTEG_FOR_PRF.get(p.prf) != p.integ:
        raise PolicyError(
            f"IKEv1 phase 1 uses one hash for PRF and integrity: {p.prf} goes with "
            f"{INTEG_FOR_PRF.get(p.prf)}, not {p.integ}"
        )


def check_esp_proposal(p: EspProposal, version: int) -> None:
    _need(ENCR, p.encr, "encryption algorithm")  # type: ignore[arg-type]
    e = ENCR[p.encr]
    if p.encr_keylen not in e.key_lengths:
        raise PolicyError(f"{p.encr} takes key lengths {e.key_lengths}, not {p.encr_keylen}")
    if (e.v2_id if version == 2 else e.v1_esp_id) is None:
        raise PolicyError(f"{p.encr} is not defined for ESP with IKEv{version}")
    if e.aead:
        if p.integ is not None:
            raise PolicyError(f"{p.encr} is an AEAD cipher: leave integrity empty")
    else:
        if p.integ is None:
            raise PolicyError(f"{p.encr} needs an integrity algorithm")
        _need(INTEG, p.integ, "integrity algorithm")  # type: ignore[arg-type]
