"""Static ESP tunnels from the command line, without IKE: for tests, debugging and throughput checks.

    python -m ike.dataplane.manual --local 198.18.0.1 --remote 198.18.0.2 \\
        --local-ts 198.19.1.0/24 --remote-ts 198.19.2.0/24 \\
        --spi-in 1001 --spi-out 1002 --encr aes-gcm-16 --keylen 128 \\
        --key-in <hex> --key-out <hex> [--integ hmac-sha2-256-128 --ikey-in <hex> --ikey-out <hex>]

The peer runs the same with in/out swapped. Prints "ready" once traffic can flow, runs until SIGTERM
or SIGINT, then removes everything it added and prints the counters as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from ike.dataplane.base import DataPlaneError
from ike.dataplane.userspace import DEFAULT_MTU, DEFAULT_TUN, UserspaceDataPlane
from ike.policy import (
    DataManagementPolicy,
    EspProposal,
    Phase2Tunnel,
    PolicyError,
    TrafficSelector,
)
from ike.proto.api import ChildSaEstablished, ChildSaKeys, Role


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hexadecimal") from None


def _spi(text: str) -> bytes:
    try:
        n = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"SPI {text!r} is not hexadecimal") from None
    if not 0x100 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"SPI {text} must be in 100-ffffffff (hex)")
    return n.to_bytes(4, "big")


def build_child(a: argparse.Namespace) -> ChildSaEstablished:
    local_ts = tuple(TrafficSelector.parse(t, a.proto, a.local_port) for t in a.local_ts)
    remote_ts = tuple(TrafficSelector.parse(t, a.proto, a.remote_port) for t in a.remote_ts)
    prop = EspProposal(a.encr, a.keylen, a.integ, a.esn)
    pol = DataManagementPolicy("manual", proposals=(prop,), lifetime_s=a.lifetime_s, lifetime_kb=a.lifetime_kb)
    p2 = Phase2Tunnel(0, "manual", 0, local_ts[0], remote_ts[0], pol)
    port = 4500 if a.udp else 0
    return ChildSaEstablished(
        child_id=a.child_id,
        sa_id=0,
        phase2=p2,
        role=Role.INITIATOR,
        protocol="esp",
        mode=a.mode,
        proposal=prop,
        inbound=ChildSaKeys(a.spi_in, a.key_in, a.ikey_in or b""),
        outbound=ChildSaKeys(a.spi_out, a.key_out, a.ikey_out or b""),
        local_ts=local_ts,
        remote_ts=remote_ts,
        local=(a.local, port),
        remote=(a.remote, port),
        udp_encap=a.udp,
        lifetime_s=a.lifetime_s,
        lifetime_kb=a.lifetime_kb,
        pfs_group=0,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ike.dataplane.manual", description=__doc__.split("\n\n")[0])
    p.add_argument("--local", required=True, help="our outer address")
    p.add_argument("--remote", required=True, help="the peer's outer address")
    p.add_argument("--local-ts", action="append", required=True, help="local selector (repeatable)")
    p.add_argument("--remote-ts", action="append", required=True, help="remote selector (repeatable)")
    p.add_argument("--proto", type=int, default=0, help="IP protocol of every selector (0 = any)")
    p.add_argument("--local-port", type=int, default=0, help="port of the local selectors (0 = any)")
    p.add_argument("--remote-port", type=int, default=0, help="port of the remote selectors (0 = any)")
    p.add_argument("--spi-in", type=_spi, required=True, help="hex")
    p.add_argument("--spi-out", type=_spi, required=True, help="hex")
    p.add_argument("--encr", default="aes-gcm-16")
    p.add_argument("--keylen", type=int, default=128)
    p.add_argument("--key-in", type=_hex, required=True, help="hex, AEAD salt included")
    p.add_argument("--key-out", type=_hex, required=True)
    p.add_argument("--integ", default=None)
    p.add_argument("--ikey-in", type=_hex, default=None)
    p.add_argument("--ikey-out", type=_hex, default=None)
    p.add_argument("--esn", action="store_true")
    p.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    p.add_argument("--no-udp", dest="udp", action="store_false", help="plain ESP (IP protocol 50)")
    p.add_argument(
        "--no-filter",
        dest="filter",
        action="store_false",
        help="no nftables inbound filter (cleartext bypassing the tunnel is then accepted)",
    )
    p.add_argument("--tun", default=DEFAULT_TUN)
    p.add_argument("--mtu", type=int, default=DEFAULT_MTU)
    p.add_argument("--lifetime-s", type=int, default=3600)
    p.add_argument("--lifetime-kb", type=int, default=0)
    p.add_argument("--child-id", type=int, default=1)
    p.add_argument(
        "--daemon-socket",
        action="store_true",
        help="own the port-4500 socket as the daemon would (receive_udp_esp/set_udp_sender) instead of attaching it",
    )
    p.add_argument("--profile", metavar="FILE", help="write a cProfile of the run to FILE (%%p: the process id)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def run(a: argparse.Namespace) -> int:
    child = build_child(a)
    dp = UserspaceDataPlane(tun_name=a.tun, mtu=a.mtu, inbound_filter=a.filter)
    expiries: list[tuple[int, str]] = []
    dp.set_expiry_callback(lambda cid, kind: expiries.append((cid, kind)))
    sock: socket.socket | None = None
    transport: asyncio.DatagramTransport | None = None
    await dp.start()
    try:
        if a.udp:
            fam = socket.AF_INET6 if ipaddress.ip_address(a.local).version == 6 else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            sock.bind((a.local, 4500))
            if a.daemon_socket:
                transport = await _daemon_style_socket(dp, sock)
            else:
                dp.attach_udp_socket(sock, lambda data, local, remote: None)
        dp.install(child)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        c = dp.counters(child.child_id)
        report = {
            **dataclasses.asdict(c),
            "no_policy": dp.no_policy,
            "unknown_spi": dp.unknown_spi,
            "send_errors": dp.send_errors,
            "not_whole": dp.not_whole,
            "expiries": expiries,
        }
        print(json.dumps(report), flush=True)
    finally:
        await dp.close()
        if transport is not None:
            transport.close()
        elif sock is not None:
            sock.close()
    return 0


async def _daemon_style_socket(dp: UserspaceDataPlane, sock: socket.socket) -> asyncio.DatagramTransport:
    """What the daemon does when it keeps port 4500 to itself: bypass mark, hand ESP over, lend a sender."""
    dp.bypass_socket(sock)
    local = sock.getsockname()[:2]

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            if len(data) > 8 and data[:4] != b"\0\0\0\0":  # not the non-ESP marker: ESP
                dp.receive_udp_esp(data, (local[0], local[1]), (str(addr[0]), addr[1]))

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Proto, sock=sock)
    dp.set_udp_sender(lambda data, _local, remote: transport.sendto(data, remote))
    return transport


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if a.profile:
            import cProfile

            with cProfile.Profile() as prof:
                rc = asyncio.run(run(a))
            prof.dump_stats(a.profile.replace("%p", str(os.getpid())))
            return rc
        return asyncio.run(run(a))
    except (DataPlaneError, PolicyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
