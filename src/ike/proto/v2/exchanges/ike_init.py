"""IKE_SA_INIT (RFC 7296 §1.2): SA, KE, Nonce, NAT detection (§2.23), COOKIE (§2.6),
INVALID_KE_PAYLOAD (§1.2), SIGNATURE_HASH_ALGORITHMS (RFC 7427) and fragmentation support (RFC 7383).

    initiator  HDR, [N(COOKIE),] SAi1, KEi, Ni, N(NAT_D_SRC), N(NAT_D_DST), N(FRAG_SUP), N(SIG_HASH)  -->
               <--  HDR, SAr1, KEr, Nr, [CERTREQ], N(NAT_D_SRC), N(NAT_D_DST), N(FRAG_SUP), N(SIG_HASH)

The responder side runs before any state exists (`process_r` returns the new IKE SA, or None when it
answered statelessly: COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN, INVALID_SYNTAX).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import struct
from typing import TYPE_CHECKING

from ike.policy import AuthMethod, IkeProposal
from ike.proto.api import Address, Datagram
from ike.proto.crypto import CryptoError, DhPrivate
from ike.proto.transforms import DH
from ike.proto.v2 import proposals as props
from ike.proto.v2.auth import OUR_HASHES
from ike.proto.v2.exchanges.base import Result, Task
from ike.proto.v2.keys import derive_ike_keys, skeyseed
from ike.proto.v2.payloads import notify as n
from ike.proto.v2.payloads.base import Payload
from ike.proto.v2.payloads.cert import CertReqPayload
from ike.proto.v2.payloads.header import FLAG_RESPONSE, IKE_SA_INIT, IkeHeader
from ike.proto.v2.payloads.ke import KePayload
from ike.proto.v2.payloads.message import Message, encode_plain
from ike.proto.v2.payloads.nonce import NoncePayload
from ike.proto.v2.payloads.notify import NotifyPayload
from ike.proto.v2.payloads.sa import SaPayload
from ike.proto.v2.state import IkeSa, IkeState

if TYPE_CHECKING:
    from ike.proto.v2.engine import Ikev2Engine

NONCE_LEN = 32
ZERO_SPI = bytes(8)


@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


@functools.lru_cache(maxsize=4096)
def _packed_address(addr: Address) -> bytes:
    # The same few local and peer addresses go into four NAT-D hashes per IKE_SA_INIT.
    return _packed(addr[0]) + struct.pack("!H", addr[1])


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Address) -> bytes:
    return hashlib.sha1(spi_i + spi_r + _packed_address(addr), usedforsecurity=False).digest()


def nat_payloads(spi_i: bytes, spi_r: bytes, local: Address, remote: Address, fake_src: bool) -> list[Payload]:
    src = os.urandom(20) if fake_src else nat_hash(spi_i, spi_r, local)
    return [
        NotifyPayload(notify_type=n.NAT_DETECTION_SOURCE_IP, data=src),
        NotifyPayload(notify_type=n.NAT_DETECTION_DESTINATION_IP, data=nat_hash(spi_i, spi_r, remote)),
    ]


def check_nat(msg: Message, local: Address, remote: Address) -> tuple[bool, bool] | None:
    """(we are behind a NAT, the peer is) from the peer's NAT-D notifies; None if it sent none."""
    h = msg.header
    srcs = [p.data for p in msg.payloads if type(p) is NotifyPayload and p.notify_type == n.NAT_DETECTION_SOURCE_IP]
    dst = msg.notify(n.NAT_DETECTION_DESTINATION_IP)
    if not srcs or dst is None:
        return None
    peer_natted = nat_hash(h.spi_i, h.spi_r, remote) not in srcs
    we_natted = not hmac.compare_digest(dst.data, nat_hash(h.spi_i, h.spi_r, local))
    return we_natted, peer_natted


_OUR_HASHES_DATA = b"".join(struct.pack("!H", h) for h in OUR_HASHES)


def capability_payloads(eng: Ikev2Engine, fragmentation: bool = True) -> list[Payload]:
    """`fragmentation`: offer RFC 7383 fragmentation if configured (a responder only to a peer that did)."""
    out: list[Payload] = []
    if fragmentation and eng.settings.fragment_size > 0:
        out.append(NotifyPayload(notify_type=n.IKEV2_FRAGMENTATION_SUPPORTED))
    if eng.settings.extra.get("signature_hash_notify", True):
        out.append(NotifyPayload(notify_type=n.SIGNATURE_HASH_ALGORITHMS, data=_OUR_HASHES_DATA))
    return out


def _hash_ids(data: bytes) -> frozenset[int]:
    return frozenset(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


# Peers send the same SIGNATURE_HASH_ALGORITHMS list every time: parsed once per list of an ordinary size.
_cached_hash_ids = functools.lru_cache(maxsize=64)(_hash_ids)


def read_capabilities(sa: IkeSa, msg: Message) -> None:
    sa.peer_fragmentation = msg.notify(n.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    sh = msg.notify(n.SIGNATURE_HASH_ALGORITHMS)
    if sh is not None:
        d = sh.data
        sa.peer_hashes = _cached_hash_ids(d) if len(d) <= 64 else _hash_ids(d)
    sa.peer_wants_cert = msg.get(CertReqPayload) is not None


def certreq_payloads(eng: Ikev2Engine, auth: AuthMethod, ca_file: str | None) -> list[Payload]:
    if auth is AuthMethod.PSK or not ca_file or not eng.settings.extra.get("send_certreq", True):
        return []
    keyids = eng.ca_keyids(ca_file)
    return [CertReqPayload(data=b"".join(keyids))] if keyids else []


def derive(sa: IkeSa, proposal: IkeProposal, g_ir: bytes) -> None:
    seed = skeyseed(proposal.prf, sa.ni, sa.nr, g_ir)
    sa.keys = derive_ike_keys(proposal, seed, sa.ni, sa.nr, sa.spi_i, sa.spi_r)
    sa.out, sa.inb = sa.keys.ciphers(proposal, sa.initiator)
    sa.proposal = proposal


class IkeInit(Task):
    exchange = IKE_SA_INIT
    name = "IKE_SA_INIT"
    runs_in = frozenset({IkeState.INIT_SENT})

    def __init__(self, group: int) -> None:
        self.group = group
        self.cookie: bytes | None = None
        self.tried_groups = {group}
        self.cookies_seen = 0

    def build_i(self, eng: Ikev2Engine, sa: IkeSa, now: float) -> list[Payload] | None:
        assert sa.phase1 is not None
        if sa.dh is None or sa.dh.group != self.group:
            sa.dh = DhPrivate(self.group)
        if not sa.ni:
            sa.ni = os.urandom(NONCE_LEN)
        pol = sa.phase1.policy
        out: list[Payload] = []
        if self.cookie is not None:
            out.append(NotifyPayload(notify_type=n.COOKIE, data=self.cookie))
        out += [
            SaPayload(proposals=[props.ike_to_wire(p, i + 1) for i, p in enumerate(pol.proposals)]),
            KePayload(group=self.group, data=sa.dh.public),
            NoncePayload(data=sa.ni),
        ]
        out += nat_payloads(sa.spi_i, ZERO_SPI, sa.local, sa.remote, sa.force_encap)
        out += capability_payloads(eng)
        return out

    def process_i(self, eng: Ikev2Engine, sa: IkeSa, msg: Message, now: float) -> Result:
        assert sa.phase1 is not None and sa.dh is not None
        pol = sa.phase1.policy
        offered = props.describe_ike(pol.proposals)
        cookie = msg.notify(n.COOKIE)
        if cookie is not None:
            self.cookies_seen += 1
            if self.cookies_seen > 3 or not 1 <= len(cookie.data) <= 64:
                eng.fail(sa, 1, "responder keeps asking for a COOKIE", notify="COOKIE")
                return Result.DONE
            self.cookie = cookie.data
            return Result.RETRY
        err = msg.error_notify()
        if err is not None:
            if err.notify_type == n.INVALID_KE_PAYLOAD and len(err.data) == 2:
                (group,) = struct.unpack("!H", err.data)
                ours = [p.dh for p in pol.proposals]
                if group in ours and group not in self.tried_groups:
                    self.group = group
                    self.tried_groups.add(group)
                    sa.ni = b""  # a fresh exchange: new nonce and key pair
                    return Result.RETRY
                eng.fail(
                    sa,
                    1,
                    f"responder asked for DH group {group}, which we do not offer or already tried",
                    offered=offered,
                    peer_offered=(f"DH group {group}",),
                    notify="INVALID_KE_PAYLOAD",
                )
                return Result.DONE
            if err.notify_type == n.NO_PROPOSAL_CHOSEN:
                eng.fail(
                    sa,
                    1,
                    "responder accepted none of our IKE proposals",
                    offered=offered,
                    peer_offered=("(not disclosed by the responder)",),
                    notify="NO_PROPOSAL_CHOSEN",
                )
                return Result.DONE
            eng.fail(
                sa,
                1,
                f"responder refused IKE_SA_INIT with {n.notify_name(err.notify_type)}",
                offered=offered,
                notify=n.notify_name(err.notify_type),
            )
            return Result.DONE
        sap, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
        if sap is None or ke is None or nonce is None:
            eng.fail(sa, 1, "IKE_SA_INIT response lacks SA, KE or Nonce payload", notify="INVALID_SYNTAX")
            return Result.DONE
        chosen = props.selected_ike(pol.proposals, sap.proposals)
        if chosen is None:
            eng.fail(
                sa,
                1,
                "responder chose a proposal we did not offer",
                offered=offered,
                peer_offered=props.describe(sap.proposals),
                notify="NO_PROPOSAL_CHOSEN",
            )
            return Result.DONE
        if ke.group != chosen.dh or chosen.dh != self.group:
            eng.fail(
                sa,
                1,
                f"responder's KE is for DH group {ke.group}, the chosen proposal has {chosen.dh} "
                f"and we sent {self.group}",
                offered=offered,
                peer_offered=props.describe(sap.proposals),
            )
            return Result.DONE
        if msg.header.spi_r == ZERO_SPI:
            eng.fail(sa, 1, "responder's SPI is zero", notify="INVALID_SYNTAX")
            return Result.DONE
        try:
            g_ir = sa.dh.shared(ke.data)
        except CryptoError as e:
            eng.fail(sa, 1, f"responder's key exchange value is invalid: {e}", notify="INVALID_SYNTAX")
            return Result.DONE
        eng.set_peer_spi(sa, msg.header.spi_r)
        sa.nr = nonce.data
        derive(sa, chosen, g_ir)
        sa.dh = None
        sa.init_response = msg.raw
        read_capabilities(sa, msg)
        nat = check_nat(msg, sa.local, sa.remote)
        if nat is not None:
            sa.nat_local, sa.nat_remote = nat
        if sa.udp_encap:
            eng.float_to_4500(sa)
        return Result.DONE


# --- responder ------------------------------------------------------------------------------------


class CookieGuard:
    """Counts half-open IKE SAs of this process and makes and checks COOKIEs (§2.6).
    Cookie = version | SHA-256(Ni | IPi | SPIi | secret); the secret changes every `lifetime` seconds
    of the time the engines are given, and the previous one is still accepted."""

    def __init__(self, lifetime: float = 300.0) -> None:
        self.half_open = 0
        self.lifetime = lifetime
        self._secrets = [os.urandom(32), os.urandom(32)]
        self._version = 0
        self._rotated: float | None = None

    def _rotate(self, now: float) -> None:
        if self._rotated is None or now < self._rotated:
            self._rotated = now
        elif now - self._rotated > self.lifetime:
            self._version = (self._version + 1) % 256
            self._secrets = [os.urandom(32), self._secrets[0]]
            self._rotated = now

    def _make(self, version: int, secret: bytes, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        return bytes([version]) + hashlib.sha256(ni + _packed(ip) + spi_i + secret).digest()

    def make(self, ni: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        self._rotate(now)
        return self._make(self._version, self._secrets[0], ni, ip, spi_i)

    def check(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        self._rotate(now)
        if not cookie:
            return False
        for version, secret in ((self._version, self._secrets[0]), ((self._version - 1) % 256, self._secrets[1])):
            if cookie[0] == version and hmac.compare_digest(cookie, self._make(version, secret, ni, ip, spi_i)):
                return True
        return False


DEFAULT_GUARD = CookieGuard()


def _reply(eng: Ikev2Engine, dg: Datagram, req: IkeHeader, payloads: list[Payload], spi_r: bytes = ZERO_SPI) -> bytes:
    h = IkeHeader(req.spi_i, spi_r, 0, IKE_SA_INIT, FLAG_RESPONSE, 0)
    data = encode_plain(h, payloads)
    eng.send_raw(data, dg.local, dg.remote)
    return data


def process_r(eng: Ikev2Engine, dg: Datagram, msg: Message, now: float) -> IkeSa | None:
    """Answer a first IKE_SA_INIT request; create the half-open IKE SA if it is acceptable."""
    h = msg.header
    if h.is_response or not h.from_initiator or h.msg_id != 0 or h.spi_r != ZERO_SPI or h.spi_i == ZERO_SPI:
        eng.drop(dg, "not a valid first IKE_SA_INIT request (flags, message ID or SPIs wrong)")
        return None
    p = msg.unsupported_critical()
    if p is not None:
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes([p.ptype]))])
        eng.drop(dg, f"unsupported critical payload type {p.ptype} in IKE_SA_INIT")
        return None
    sap, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
    if sap is None or ke is None or nonce is None:
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.INVALID_SYNTAX)])
        eng.drop(dg, "IKE_SA_INIT request lacks SA, KE or Nonce payload (answered INVALID_SYNTAX)")
        return None
    guard = eng.cookie_guard
    if guard.half_open >= eng.settings.half_open_cookie_threshold:
        c = msg.notify(n.COOKIE)
        if c is None or not guard.check(c.data, nonce.data, dg.remote[0], h.spi_i, now):
            _reply(
                eng,
                dg,
                h,
                [NotifyPayload(notify_type=n.COOKIE, data=guard.make(nonce.data, dg.remote[0], h.spi_i, now))],
            )
            return None
    candidates = tuple(t for t in eng.policies.phase1_by_address(dg.local[0], dg.remote[0]) if t.policy.version == 2)
    if not candidates:
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN)])
        eng.emit_failed(
            1,
            f"no IKEv2 tunnel definition for {dg.local[0]} <-> {dg.remote[0]}",
            peer_offered=props.describe(sap.proposals),
            notify="NO_PROPOSAL_CHOSEN",
        )
        return None
    ours: list[IkeProposal] = []
    for t in candidates:
        ours += [p for p in t.policy.proposals if p not in ours]
    choice = props.choose_ike(ours, sap.proposals)
    if choice is None:
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.NO_PROPOSAL_CHOSEN)])
        eng.emit_failed(
            1,
            "no IKE proposal of the peer is acceptable",
            phase1=candidates[0],
            offered=props.describe_ike(ours),
            peer_offered=props.describe(sap.proposals),
            notify="NO_PROPOSAL_CHOSEN",
        )
        return None
    chosen, wire = choice
    if ke.group != chosen.dh:
        # The peer guessed another group: ask for ours (stateless, §1.2).
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.INVALID_KE_PAYLOAD, data=struct.pack("!H", chosen.dh))])
        return None
    if chosen.dh not in DH:
        return None
    dh = DhPrivate(chosen.dh)
    try:
        g_ir = dh.shared(ke.data)
    except CryptoError as e:
        _reply(eng, dg, h, [NotifyPayload(notify_type=n.INVALID_SYNTAX)])
        eng.emit_failed(1, f"peer's key exchange value is invalid: {e}", phase1=candidates[0], notify="INVALID_SYNTAX")
        eng.drop(dg, f"invalid DH public value: {e}")
        return None
    sa = eng.new_sa(initiator=False, spi_i=h.spi_i, local=dg.local, remote=dg.remote, state=IkeState.HALF_OPEN, now=now)
    sa.candidates = candidates
    sa.phase1 = candidates[0]
    sa.ni = nonce.data
    sa.nr = os.urandom(NONCE_LEN)
    sa.init_request = msg.raw
    derive(sa, chosen, g_ir)
    read_capabilities(sa, msg)
    nat = check_nat(msg, dg.local, dg.remote)
    sa.force_encap = bool(eng.settings.extra.get("force_udp_encap", False))
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    out: list[Payload] = [
        SaPayload(proposals=[props.ike_to_wire(chosen, wire.number)]),
        KePayload(group=chosen.dh, data=dh.public),
        NoncePayload(data=sa.nr),
    ]
    if nat is not None:
        out += nat_payloads(sa.spi_i, sa.spi_r, dg.local, dg.remote, sa.force_encap)
    first = candidates[0]
    out += certreq_payloads(eng, first.policy.auth, first.credentials.ca_file)
    out += capability_payloads(eng, sa.peer_fragmentation)
    sa.init_response = _reply(eng, dg, h, out, sa.spi_r)
    sa.response_cache = (0, [sa.init_response])
    sa.peer_msg_id = 1
    return sa
