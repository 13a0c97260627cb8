"""engine-cpu: the IKEv2 responder's CPU time for IKE_SA_INIT + IKE_AUTH (PSK, Curve25519,
AES-GCM) beyond the crypto itself, in memory, no sockets (the design figure of the IKEv2 engine
issue: well under a millisecond). With --version 1, the IKEv1 responder's for main mode + quick mode
(MM1..MM6, QM1..QM3; PSK, AES-CBC-128/HMAC-SHA-256, Curve25519, ESP AES-GCM-128, no PFS: the
setup-rate v1-x25519 negotiation).

The crypto a responder must do (IKEv2: one X25519 key pair and agreement, the HMACs of SKEYSEED,
prf+ and AUTH, one AEAD open and seal, the nonces; IKEv1: one X25519 key pair and agreement, the
HMACs of SKEYID, SKEYID_d/a/e, HASH_I/HASH_R, HASH(1)-(3) and KEYMAT, the NAT-D and IV hashes, three
CBC decryptions and two encryptions, the cookie, nonces and SPI) is timed on its own in the same
process and subtracted. Medians of batches, the best batch taken. A diagnostic like
memory_profile.py, not a comparison: charon's engine cannot be driven alone, so there is no ratio.

    python bench/engine_cpu.py [--version 1|2] [--batches 3] [--n 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts src/ on sys.path)
from ike.policy import (
    AuthMethod,
    Credentials,
    DataManagementPolicy,
    EspProposal,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)
from ike.proto.api import ChildSaEstablished, Datagram, EngineSettings
from ike.proto.crypto import DhPrivate, IkeCipher, hash_bytes, hmac_digest
from ike.proto.static_policies import StaticPolicies
from ike.proto.v1 import Ikev1Engine
from ike.proto.v2 import CookieGuard, Ikev2Engine

I_IP, R_IP = "198.18.0.1", "198.18.0.2"
I_NET, R_NET = "198.19.1.0/24", "198.19.2.0/24"


def definitions(me: str, peer: str, my_net: str, peer_net: str) -> tuple[Phase1Tunnel, Phase2Tunnel]:
    km = KeyManagementPolicy("km", version=2, proposals=(IkeProposal("aes-gcm-16", 128, None, "hmac-sha2-256", 31),))
    dm = DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 128, None),))
    creds = Credentials(psk=b"engine-cpu benchmark key 0123456789")
    p1 = Phase1Tunnel(1, "gw", Identity.parse(me), Identity.parse(peer), me, peer, km, creds)
    return p1, Phase2Tunnel(1, "net", 1, TrafficSelector.subnet(my_net), TrafficSelector.subnet(peer_net), dm)


def _flip(d: Datagram) -> Datagram:
    return Datagram(d.data, d.remote, d.local)


def responder_cpu(n: int) -> float:
    p1, p2 = definitions(I_IP, R_IP, I_NET, R_NET)
    rp1, rp2 = definitions(R_IP, I_IP, R_NET, I_NET)
    pi, pr = StaticPolicies([p1], [p2]), StaticPolicies([rp1], [rp2])
    st = EngineSettings(extra={"ikev2_cookie_guard": CookieGuard()})
    times = []
    for _ in range(n):
        i = Ikev2Engine.initiate(p1, [p2], pi, st, (I_IP, 500), (R_IP, 500), 0.0)
        d = _flip(i.datagrams_to_send()[0])
        t0 = time.process_time()
        r = Ikev2Engine.respond(d, pr, st, 0.0)
        t1 = time.process_time()
        if r is None:
            raise SystemExit("engine-cpu: the responder refused IKE_SA_INIT")
        for x in r.datagrams_to_send():
            i.receive_datagram(_flip(x), 0.0)
        d = _flip(i.datagrams_to_send()[0])
        t2 = time.process_time()
        r.receive_datagram(d, 0.0)
        t3 = time.process_time()
        if not r.is_established():
            raise SystemExit("engine-cpu: IKE_AUTH did not establish the IKE SA")
        r.delete(0.0)
        times.append((t1 - t0) + (t3 - t2))
    return statistics.median(times)


def crypto_cpu(n: int) -> float:
    times = []
    for _ in range(n):
        peer = DhPrivate(31).public
        t0 = time.process_time()
        DhPrivate(31).shared(peer)
        for _ in range(16):  # SKEYSEED, prf+ blocks (IKE and child), AUTH prf twice each way
            hmac_digest("sha256", b"k" * 32, b"d" * 120)
        c = IkeCipher("aes-gcm-16", b"k" * 20)
        ct = c.aead_encrypt(b"i" * 8, b"p" * 200, b"a" * 32)
        c.aead_decrypt(b"i" * 8, ct, b"a" * 32)
        for _ in range(6):
            os.urandom(32)
        times.append(time.process_time() - t0)
    return statistics.median(times)


# --- IKEv1 -----------------------------------------------------------------------------------------


def definitions_v1(me: str, peer: str, my_net: str, peer_net: str) -> tuple[Phase1Tunnel, Phase2Tunnel]:
    """As bench/loadgen.py and the iked configuration of bench/setup_rate.py (variant v1-x25519)."""
    prop = IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 31)
    km = KeyManagementPolicy("km", 1, "main", (prop,), 28800, 0, AuthMethod.PSK, 0)
    dm = DataManagementPolicy("dm", "esp", (EspProposal("aes-gcm-16", 128, None),), 0, 3600, 0, "tunnel")
    creds = Credentials(psk=b"engine-cpu benchmark key 0123456789")
    p1 = Phase1Tunnel(1, "gw", Identity.parse(me), Identity.parse(peer), me, peer, km, creds)
    return p1, Phase2Tunnel(1, "net", 1, TrafficSelector.subnet(my_net), TrafficSelector.subnet(peer_net), dm)


def responder_cpu_v1(n: int) -> float:
    p1, p2 = definitions_v1(I_IP, R_IP, I_NET, R_NET)
    rp1, rp2 = definitions_v1(R_IP, I_IP, R_NET, I_NET)
    pi, pr = StaticPolicies([p1], [p2]), StaticPolicies([rp1], [rp2])
    st = EngineSettings()
    times = []
    for _ in range(n):
        i = Ikev1Engine.initiate(p1, [p2], pi, st, (I_IP, 500), (R_IP, 500), 0.0)
        d = _flip(i.datagrams_to_send()[0])
        t0 = time.process_time()
        r = Ikev1Engine.respond(d, pr, st, 0.0)  # MM1 -> MM2
        spent = time.process_time() - t0
        if r is None:
            raise SystemExit("engine-cpu: the responder refused MM1")
        received = 1
        while True:  # MM3 -> MM4, MM5 -> MM6, QM1 -> QM2, QM3
            for x in r.datagrams_to_send():
                i.receive_datagram(_flip(x), 0.0)
            ins = i.datagrams_to_send()
            if not ins:
                break
            for x in ins:
                t0 = time.process_time()
                r.receive_datagram(_flip(x), 0.0)
                spent += time.process_time() - t0
                received += 1
        events = []
        while (ev := r.next_event()) is not None:
            events.append(ev)
        if received != 5 or sum(isinstance(e, ChildSaEstablished) for e in events) != 1:
            raise SystemExit(f"engine-cpu: main mode + quick mode did not complete: {events}")
        r.delete(0.0)
        times.append(spent)
    return statistics.median(times)


def crypto_cpu_v1(n: int) -> float:
    times = []
    for _ in range(n):
        peer = DhPrivate(31).public
        t0 = time.process_time()
        DhPrivate(31).shared(peer)
        # SKEYID, SKEYID_d/a/e, HASH_I checked, HASH_R, HASH(1) checked, HASH(2), HASH(3) checked,
        # KEYMAT for each direction (AES-GCM-128 with its salt takes one block each)
        for size in (64, 49, 81, 81, 136, 136, 130, 160, 69, 69, 69):
            hmac_digest("sha256", b"k" * 32, b"d" * size)
        for _ in range(4):  # NAT-D: the peer's two checked, ours two
            hash_bytes("sha256", b"n" * 22)
        hash_bytes("sha256", b"g" * 64)  # the phase 1 IV
        hash_bytes("sha256", b"b" * 20)  # the quick mode IV
        c = IkeCipher("aes-cbc", b"k" * 16)
        iv = b"i" * 16
        for size in (80, 160, 48):  # MM5, QM1, QM3 opened (what follows the header)
            c.cbc_decrypt(iv, b"c" * size)
        for size in (48, 160):  # MM6, QM2 sealed
            c.cbc_encrypt(iv, b"p" * size)
        for size in (8, 32, 4, 32):  # CKY-R, Nr of main mode, the SPI, Nr of quick mode
            os.urandom(size)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="one small batch (for make test)")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--n", type=int, default=100, help="negotiations per batch")
    p.add_argument("--version", type=int, choices=(1, 2), default=2, help="the IKE version of the responder")
    a = p.parse_args()
    batches, n = (1, 5) if a.tiny else (a.batches, a.n)
    if a.version == 1:
        responder_cpu_v1(min(n, 20))  # warm-up: first-use imports and caches
        results = [(responder_cpu_v1(n), crypto_cpu_v1(n)) for _ in range(batches)]
        total, crypto = min(results, key=lambda r: r[0] - r[1])
        print(
            "engine-cpu: IKEv1 responder, main mode + quick mode, PSK, AES-CBC-128/HMAC-SHA-256, Curve25519, "
            f"ESP AES-GCM-128; {batches} batch(es) of {n}"
        )
        print(f"  responder CPU per MM1..MM6 + QM1..QM3: {1000 * total:.3f} ms, of which crypto {1000 * crypto:.3f} ms")
        print(f"FIGURE engine-cpu-v1 beyond-crypto={1000 * max(0.0, total - crypto):.3f}ms")
        return 0
    responder_cpu(min(n, 20))  # warm-up: first-use imports and caches
    results = [(responder_cpu(n), crypto_cpu(n)) for _ in range(batches)]
    total, crypto = min(results, key=lambda r: r[0] - r[1])
    print(f"engine-cpu: IKEv2 responder, PSK, AES-GCM-128, Curve25519; {batches} batch(es) of {n}")
    print(f"  responder CPU per IKE_SA_INIT + IKE_AUTH: {1000 * total:.3f} ms, of which crypto {1000 * crypto:.3f} ms")
    print(f"FIGURE engine-cpu beyond-crypto={1000 * max(0.0, total - crypto):.3f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
