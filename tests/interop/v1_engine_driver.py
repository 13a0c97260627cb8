"""Runs one Ikev1Engine over real UDP sockets (500 and 4500, with the non-ESP marker) inside a test
namespace, for test_v1_engine_strongswan.py. No daemon: this is the engine alone against strongSwan.

    python v1_engine_driver.py '<json config>'

Prints one JSON object per engine event on stdout; exits one second after its first phase 2 SA is
up, or after `duration` seconds.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

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
from ike.proto.api import Datagram, EngineSettings, Event
from ike.proto.static_policies import StaticPolicies
from ike.proto.v1 import Ikev1Engine

NON_ESP = b"\0\0\0\0"


def _event(ev: Event) -> dict[str, object]:
    d: dict[str, object] = {"type": type(ev).__name__}
    for k, v in vars(ev).items():
        if isinstance(v, bytes):
            d[k] = v.hex()
        elif k in ("inbound", "outbound"):
            d[k] = v.spi.hex()
        elif isinstance(v, int | str | bool | float) or v is None:
            d[k] = v
        elif isinstance(v, tuple) and all(isinstance(x, str) for x in v):
            d[k] = list(v)
    return d


def main(cfg: dict[str, object]) -> None:
    auth = AuthMethod(str(cfg["auth"]))
    creds = (
        Credentials(psk=str(cfg["psk"]).encode())
        if auth is AuthMethod.PSK
        else Credentials(cert_file=str(cfg["cert"]), key_file=str(cfg["key"]), ca_file=str(cfg["ca"]))
    )
    p1 = Phase1Tunnel(
        1, "t1", Identity.parse(str(cfg["local_id"])), Identity.parse(str(cfg["remote_id"])),
        str(cfg["local"]), str(cfg["remote"]),
        KeyManagementPolicy("p1", version=1, mode=str(cfg["mode"]), auth=auth, dpd_delay_s=10,
                            proposals=(IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 14),)),
        creds,
    )  # fmt: skip
    esp = (
        EspProposal("aes-gcm-16", 128, None) if cfg.get("esp") == "gcm" else EspProposal("aes-cbc", 128, "hmac-sha1-96")
    )
    p2 = Phase2Tunnel(
        1, "c1", 1, TrafficSelector.parse(str(cfg["local_ts"])), TrafficSelector.parse(str(cfg["remote_ts"])),
        DataManagementPolicy("p2", proposals=(esp,), pfs_group=int(cfg.get("pfs", 0))),  # type: ignore[call-overload]
    )  # fmt: skip
    policies = StaticPolicies([p1], [p2])
    local, remote = str(cfg["local"]), str(cfg["remote"])
    s500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s500.bind((local, 500))
    s4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4500.bind((local, 4500))
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    settings = EngineSettings()
    eng = (
        Ikev1Engine.initiate(p1, [p2], policies, settings, (local, 500), (remote, 500), now())
        if cfg["role"] == "i"
        else None
    )
    duration = float(cfg.get("duration", 15))
    done_at: float | None = None

    def flush() -> None:
        nonlocal done_at
        if eng is None:
            return
        for dg in eng.datagrams_to_send():
            if dg.local[1] == 4500:
                s4500.sendto(NON_ESP + dg.data, dg.remote)
            else:
                s500.sendto(dg.data, dg.remote)
        while (ev := eng.next_event()) is not None:
            print(json.dumps(_event(ev)), flush=True)
            if type(ev).__name__ == "ChildSaEstablished" and done_at is None:
                done_at = now() + 1.0

    flush()
    while now() < duration and (done_at is None or now() < done_at):
        t = eng.get_timer() if eng is not None else None
        wait = 0.2 if t is None else max(0.0, min(0.2, t - now()))
        ready, _, _ = select.select([s500, s4500], [], [], wait)
        for s in ready:
            data, addr = s.recvfrom(65535)
            port = 500 if s is s500 else 4500
            if port == 4500:
                if not data.startswith(NON_ESP):
                    continue  # ESP or a keepalive: not the engine's
                data = data[4:]
            dg = Datagram(data, (local, port), (addr[0], addr[1]))
            if eng is None:
                eng = Ikev1Engine.respond(dg, policies, settings, now())
            else:
                eng.receive_datagram(dg, now())
        if eng is not None and (t := eng.get_timer()) is not None and now() >= t:
            eng.handle_timer(now())
        flush()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
