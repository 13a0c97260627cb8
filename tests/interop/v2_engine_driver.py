"""Runs one Ikev2Engine over real UDP sockets (500 and 4500, with the non-ESP marker) inside a test
namespace, for test_v2_engine_strongswan.py. No daemon: this is the IKEv2 engine alone.

    python v2_engine_driver.py '<json config>'

Prints one JSON object per engine event on stdout. Once the IKE SA is up it runs `script`, a list of
[seconds after establishment, action] with actions start_child2, rekey_child, rekey_ike, snapshot
(prints the live CHILD SAs), delete; it exits one second after `delete` or after `duration`.
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
from ike.proto.v2 import Ikev2Engine, StatelessOutput

NON_ESP = b"\0\0\0\0"

IKE = {
    "gcm-x25519": IkeProposal("aes-gcm-16", 256, None, "hmac-sha2-256", 31),
    "cbc-modp2048": IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", 14),
    "chacha-ecp256": IkeProposal("chacha20-poly1305", 256, None, "hmac-sha2-512", 19),
}
ESP = {
    "gcm": EspProposal("aes-gcm-16", 128, None),
    "cbc": EspProposal("aes-cbc", 256, "hmac-sha2-256-128"),  # kernel-libipsec has no ESN
    "chacha": EspProposal("chacha20-poly1305", 256, None),
}


def _event(ev: Event) -> dict[str, object]:
    d: dict[str, object] = {"type": type(ev).__name__}
    for k, v in vars(ev).items():
        if isinstance(v, bytes):
            d[k] = v.hex()
        elif k in ("inbound", "outbound"):
            d[k] = v.spi.hex()
        elif k == "proposal":
            d[k] = str(v)
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
    local, remote = str(cfg["local"]), str(cfg["remote"])
    p1 = Phase1Tunnel(
        1, "t1", Identity.parse(str(cfg["local_id"])), Identity.parse(str(cfg["remote_id"])), local, remote,
        KeyManagementPolicy("p1", version=2, auth=auth, dpd_delay_s=int(cfg.get("dpd", 3)),
                            proposals=tuple(IKE[p] for p in cfg["ike"])),  # type: ignore[attr-defined]
        creds,
    )  # fmt: skip
    pfs = int(cfg.get("pfs", 0))  # type: ignore[call-overload]
    dm = DataManagementPolicy("p2", proposals=(ESP[str(cfg["esp"])],), pfs_group=pfs)
    ts = cfg["ts"]
    p2s = [
        Phase2Tunnel(n + 1, f"c{n + 1}", 1, TrafficSelector.parse(lt), TrafficSelector.parse(rt), dm)
        for n, (lt, rt) in enumerate(ts)  # type: ignore[arg-type]
    ]
    policies = StaticPolicies([p1], p2s)
    s500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s500.bind((local, 500))
    s4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4500.bind((local, 4500))
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    settings = EngineSettings(fragment_size=int(cfg.get("fragment_size", 1280)))  # type: ignore[call-overload]
    eng = (
        Ikev2Engine.initiate(p1, p2s[:1], policies, settings, (local, 500), (remote, 500), now())
        if cfg["role"] == "i"
        else None
    )
    duration = float(cfg.get("duration", 20))  # type: ignore[arg-type]
    script: list[list[object]] = list(cfg.get("script", []))  # type: ignore[call-overload]
    up_at: float | None = None
    stop_at = duration

    def send(dgs: list[Datagram]) -> None:
        for dg in dgs:
            if dg.local[1] == 4500:
                s4500.sendto(NON_ESP + dg.data, dg.remote)
            else:
                s500.sendto(dg.data, dg.remote)

    def flush() -> None:
        if eng is None:
            return
        send(eng.datagrams_to_send())
        while (ev := eng.next_event()) is not None:
            print(json.dumps(_event(ev)), flush=True)

    flush()
    while now() < stop_at:
        t = eng.get_timer() if eng is not None else None
        wait = 0.1 if t is None else max(0.0, min(0.1, t - now()))
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
                out = StatelessOutput()
                eng = Ikev2Engine.respond(dg, policies, settings, now(), out)
                send(out.datagrams)
                for e in out.events:
                    print(json.dumps(_event(e)), flush=True)
            else:
                eng.receive_datagram(dg, now())
        if eng is not None and (t := eng.get_timer()) is not None and now() >= t:
            eng.handle_timer(now())
        flush()
        if eng is None:
            continue
        if up_at is None and eng.is_established():
            up_at = now()
        while up_at is not None and script and now() >= up_at + float(script[0][0]):  # type: ignore[arg-type]
            action = str(script.pop(0)[1])
            live = [c for c in eng.child_sas() if c.state.value == "installed"]
            print(json.dumps({"type": "action", "action": action}), flush=True)
            if action == "start_child2":
                eng.start_child(p2s[1], now())
            elif action == "rekey_child" and live:
                eng.rekey_child(live[0].child_id, now())
            elif action == "rekey_ike":
                eng.rekey_ike(now())
            elif action == "snapshot":
                kids = [{"name": c.phase2.name, "in": c.spi_in.hex(), "out": c.spi_out.hex()} for c in live]
                print(json.dumps({"type": "snapshot", "children": kids, "established": eng.is_established()}),
                      flush=True)  # fmt: skip
            elif action == "delete":
                eng.delete(now())
                stop_at = min(stop_at, now() + 1.5)
            flush()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
