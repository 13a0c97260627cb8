"""A load generator on our own initiator engines (no data plane): keeps `--inflight` IKE
negotiations (phase 1 plus one child / quick mode SA) going against one responder and counts the
ones that complete. `--local` lists the source addresses this process owns (UDP 500 and 4500 on
each), so several generator processes can run side by side in one namespace. Each address is one
client with its own identity, and a client has at most one negotiation in flight when there are as
many addresses as `--inflight`: like a peer that restarted, it sends INITIAL_CONTACT, and the
responder drops that client's previous SAs, which keeps its tables small. (One identity for many
negotiations at once would not work for IKEv1: INITIAL-CONTACT comes in MM5, before the quick mode,
and made the responder drop the client's other negotiations with their quick mode in flight.)

    python bench/loadgen.py --local 198.18.0.10,198.18.0.11 --remote 198.18.0.2 --version 2 \\
        --dh 31 --local-net 198.19.10.0/24 --remote-net 198.19.2.0/24 --seconds 10 --inflight 2

Completed negotiations are forgotten, not deleted (a delete would add responder work that is not
setup work). Prints "ready" once its sockets are bound, waits for a line on stdin, runs, then
prints one JSON line: completed, failed, seconds, cpu_seconds, and the first failure reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import importlib
import json
import os
import resource
import selectors
import socket
import sys
import time
from collections import Counter
from typing import Any

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
from ike.proto.api import (
    ChildSaEstablished,
    Datagram,
    EngineSettings,
    IkeSaDeleted,
    NegotiationFailed,
    SpiAdded,
    SpiRemoved,
)
from ike.proto.static_policies import StaticPolicies

MARKER = b"\0\0\0\0"


def definitions(a: argparse.Namespace, local: str, number: int) -> tuple[Phase1Tunnel, Phase2Tunnel]:
    if a.version == 2:
        prop = IkeProposal("aes-gcm-16", 128, None, "hmac-sha2-256", a.dh)
    else:  # IKEv1 phase 1 has no AEAD
        prop = IkeProposal("aes-cbc", 128, "hmac-sha2-256-128", "hmac-sha2-256", a.dh)
    kmp = KeyManagementPolicy("gen", a.version, "main", (prop,), 28800, 0, AuthMethod.PSK, 0)
    p1 = Phase1Tunnel(
        number,
        f"gen{number}",
        Identity.parse(local),
        Identity.parse(a.remote),
        local,
        a.remote,
        kmp,
        Credentials(psk=a.psk.encode()),
    )
    dmp = DataManagementPolicy("gen", "esp", (EspProposal("aes-gcm-16", 128, None),), 0, 3600, 0, "tunnel")
    p2 = Phase2Tunnel(
        number, f"gen{number}", number, TrafficSelector.parse(a.local_net), TrafficSelector.parse(a.remote_net), dmp
    )
    return p1, p2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--local", required=True, help="source addresses, comma-separated: one client each")
    p.add_argument("--remote", required=True)
    p.add_argument("--version", type=int, choices=(1, 2), default=2)
    p.add_argument("--dh", type=int, default=31)
    p.add_argument("--psk", default="benchmark pre-shared key 0123456789")
    p.add_argument("--local-net", required=True)
    p.add_argument("--remote-net", required=True)
    p.add_argument("--seconds", type=float, default=10.0, help="run this long (after the start line)")
    p.add_argument("--count", type=int, default=0, help="stop after this many completed (0: run --seconds)")
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--no-wait", action="store_true", help="start at once instead of waiting for a stdin line")
    p.add_argument("--warmup", type=int, default=1, help="complete this many, one at a time, before 'ready'")
    a = p.parse_args(argv)

    mod: Any = importlib.import_module(f"ike.proto.v{a.version}")
    engine_cls = getattr(mod, f"Ikev{a.version}Engine")
    demux = mod.demux
    clients = [x.strip() for x in a.local.split(",") if x.strip()]
    defs = [definitions(a, addr, n) for n, addr in enumerate(clients, 1)]
    policies = StaticPolicies([d[0] for d in defs], [d[1] for d in defs])
    settings = EngineSettings(retransmit_timeout_s=2.0, retransmit_tries=3)

    socks: dict[tuple[str, int], socket.socket] = {}
    sel = selectors.DefaultSelector()
    for addr in clients:
        for port in (500, 4500):
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((addr, port))
            s.setblocking(False)
            socks[(addr, port)] = s
            sel.register(s, selectors.EVENT_READ, (addr, port))
    engines: dict[bytes, Any] = {}  # our SPI -> engine
    live: set[Any] = set()
    client_of: dict[Any, int] = {}  # engine -> index into clients
    busy = [0] * len(clients)  # negotiations in flight per client
    timers: list[tuple[float, int, Any]] = []
    completed = failed = resent = 0
    reasons: Counter[str] = Counter()
    seq = 0

    def flush(eng: Any, now: float, out: list[Any] | None = None) -> None:
        nonlocal completed, failed, seq
        for dg in eng.datagrams_to_send() if out is None else out:
            port = dg.local[1]
            data = MARKER + dg.data if port == 4500 else dg.data
            with contextlib.suppress(BlockingIOError):
                socks[(dg.local[0], 4500 if port == 4500 else 500)].sendto(data, dg.remote)
        done = False
        while (ev := eng.next_event()) is not None:
            if isinstance(ev, SpiAdded):
                engines[ev.spi] = eng
            elif isinstance(ev, SpiRemoved):
                engines.pop(ev.spi, None)
            elif isinstance(ev, ChildSaEstablished):
                completed += 1
                done = True
            elif isinstance(ev, NegotiationFailed):
                failed += 1
                reasons[ev.reason[:120]] += 1
                done = True
            elif isinstance(ev, IkeSaDeleted) and not done:
                failed += 1
                reasons[f"IKE SA deleted: {ev.reason}"[:120]] += 1
                done = True
        if done:
            live.discard(eng)
            if (c := client_of.pop(eng, None)) is not None:
                busy[c] -= 1
            for spi in [k for k, v in engines.items() if v is eng]:
                del engines[spi]
        elif eng in live and (t := eng.get_timer()) is not None:
            seq += 1
            heapq.heappush(timers, (t, seq, eng))

    def start(now: float) -> None:
        c = busy.index(min(busy))  # the least busy client: with enough of them, an idle one
        p1, p2 = defs[c]
        eng = engine_cls.initiate(p1, [p2], policies, settings, (clients[c], 500), (a.remote, 500), now)
        live.add(eng)
        client_of[eng] = c
        busy[c] += 1
        flush(eng, now)

    def run(count: int, seconds: float, inflight: int) -> None:
        nonlocal resent
        t0 = time.monotonic()
        deadline = t0 + seconds
        for _ in range(inflight):
            start(t0)
        while True:
            now = time.monotonic()
            if (count and completed >= count) or (not count and now >= deadline):
                break
            if count and now >= t0 + seconds:
                break  # a count that never comes: give up rather than hang
            while timers and timers[0][0] <= now:
                _, _, eng = heapq.heappop(timers)
                if eng in live and (t := eng.get_timer()) is not None and t <= now:
                    eng.handle_timer(now)
                    # A timer that makes a datagram is a retransmission: a message or its answer was lost.
                    out = eng.datagrams_to_send()
                    resent += len(out)
                    flush(eng, now, out)
            timeout = min(0.05, max(0.0, timers[0][0] - now)) if timers else 0.05
            for key, _ in sel.select(timeout):
                local_ip, port = key.data
                s = socks[(local_ip, port)]
                for _ in range(64):
                    try:
                        data, addr = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if port == 4500:
                        if not data.startswith(MARKER):
                            continue  # ESP or a keepalive: not ours to count
                        data = data[4:]
                    d = demux(data)
                    if d is None:
                        continue
                    # IKEv1's header cannot say which cookie is ours (see ike.proto.v1.engine): try both.
                    eng = engines.get(d.our_spi or b"") or engines.get(d.peer_spi)
                    if eng is None or eng not in live:
                        continue
                    now = time.monotonic()
                    eng.receive_datagram(Datagram(data, (local_ip, port), (addr[0], addr[1])), now)
                    flush(eng, now)
            now = time.monotonic()
            while len(live) < inflight and (not count or completed + len(live) < count):
                start(now)

    if a.warmup:
        # The responder's first negotiation pays for lazy imports and loading definitions.
        run(a.warmup, 30.0, 1)
        if completed < a.warmup:
            print(f"warm-up failed: {completed} of {a.warmup} completed; {reasons.most_common(3)}", flush=True)
            return 1
        live.clear()
        engines.clear()
        client_of.clear()
        busy[:] = [0] * len(clients)
        timers.clear()
        completed = failed = resent = 0
        reasons.clear()
    print("ready", flush=True)
    if not a.no_wait:
        sys.stdin.readline()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    run(a.count, a.seconds * 10 if a.count else a.seconds, a.inflight)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    report = {
        "completed": completed,
        "failed": failed,
        "seconds": wall,
        "cpu_seconds": cpu,
        "resent": resent,
        "pid": os.getpid(),
        "reasons": reasons.most_common(3),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
