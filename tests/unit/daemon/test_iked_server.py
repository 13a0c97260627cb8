"""UDP endpoints: port 4500 marker handling, ESP hand-off, local address on wildcard binds.
Each socket test runs in a private network namespace (iked_privnet) on 198.18.0.0/15 addresses."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from iked_privnet import run_in_private_netns

from ike.daemon.server import NON_ESP_MARKER, UdpServer, classify_natt
from ike.proto.api import Datagram

ME, OTHER = "198.18.0.1", "198.18.0.3"
IKE_PORT, NATT_PORT = 1500, 14500


def test_classify_natt() -> None:
    assert classify_natt(b"\xff") == "keepalive"
    assert classify_natt(NON_ESP_MARKER + b"ike") == "ike"
    assert classify_natt(NON_ESP_MARKER) == "runt"
    assert classify_natt(b"\x00\x00\x10\x01" + b"\x00" * 4) == "esp"
    assert classify_natt(b"\x01\x02\x03") == "runt"


class Rig:
    def __init__(self, listen: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ike: list[tuple[bytes, Any, Any]] = []
        self.esp: list[tuple[bytes, Any, Any]] = []
        self.srv = UdpServer(
            self.loop,
            [listen],
            IKE_PORT,
            NATT_PORT,
            on_ike=lambda d, loc, rem: self.ike.append((d, loc, rem)),
            on_esp=lambda d, loc, rem: self.esp.append((d, loc, rem)),
        )
        self.srv.start()
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind((OTHER, 0))
        self.peer.settimeout(2)

    def pump(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.05))

    def close(self) -> None:
        self.srv.close()
        self.peer.close()
        self.loop.close()


def _ike_port_unchanged() -> Any:
    rig = Rig(ME)
    try:
        rig.peer.sendto(b"\x00\x00\x00\x00ike-on-500", (ME, IKE_PORT))
        rig.pump()
        return rig.ike, rig.peer.getsockname()
    finally:
        rig.close()


def test_ike_port_passes_datagrams_unchanged() -> None:
    got, peer = run_in_private_netns(_ike_port_unchanged)
    assert got == [(b"\x00\x00\x00\x00ike-on-500", (ME, IKE_PORT), peer)]


ESP = b"\x00\x00\x12\x34" + b"\x00\x00\x00\x01" + b"payload"


def _natt_port() -> Any:
    rig = Rig(ME)
    try:
        dst = (ME, NATT_PORT)
        rig.peer.sendto(NON_ESP_MARKER + b"ike-msg", dst)
        rig.peer.sendto(ESP, dst)
        rig.peer.sendto(b"\xff", dst)
        rig.peer.sendto(b"\x01", dst)
        rig.pump()
        return [d for d, _, _ in rig.ike], [d for d, _, _ in rig.esp], rig.srv.stats.keepalives, rig.srv.stats.dropped
    finally:
        rig.close()


def test_natt_port_strips_marker_routes_esp_and_counts_keepalives() -> None:
    ike, esp, keepalives, dropped = run_in_private_netns(_natt_port)
    assert ike == [b"ike-msg"] and esp == [ESP] and keepalives == 1 and dropped == 1


def _send() -> Any:
    rig = Rig(ME)
    try:
        peer = rig.peer.getsockname()
        got = []
        rig.srv.send_ike(Datagram(b"on-500", (ME, IKE_PORT), peer))
        got.append(rig.peer.recvfrom(2048))
        rig.srv.send_ike(Datagram(b"on-4500", (ME, 4500), peer))  # engines say 4500
        got.append(rig.peer.recvfrom(2048))
        rig.srv.send_esp(b"\x00\x00\x12\x34esp", (ME, 4500), peer)
        got.append(rig.peer.recvfrom(2048))
        return got
    finally:
        rig.close()


def test_send_adds_marker_only_on_natt_port() -> None:
    got = run_in_private_netns(_send)
    assert got == [
        (b"on-500", (ME, IKE_PORT)),
        (NON_ESP_MARKER + b"on-4500", (ME, NATT_PORT)),
        (b"\x00\x00\x12\x34esp", (ME, NATT_PORT)),
    ]


def _wildcard() -> Any:
    rig = Rig("0.0.0.0")
    try:
        rig.peer.sendto(b"hello", (OTHER, IKE_PORT))  # to the second address, on the wildcard socket
        rig.pump()
        ((_, local, remote),) = rig.ike
        rig.srv.send_ike(Datagram(b"reply", local, remote))
        data, src = rig.peer.recvfrom(2048)
        # The socket and source-address data are kept per local address: alternating the two
        # addresses must still send from each in turn.
        sources = []
        for addr in (ME, OTHER, ME):
            rig.srv.send_ike(Datagram(b"again", (addr, IKE_PORT), remote))
            sources.append(rig.peer.recvfrom(2048)[1])
        return local, data, src, sources
    finally:
        rig.close()


def test_wildcard_bind_learns_and_uses_local_address() -> None:
    local, data, src, sources = run_in_private_netns(_wildcard)
    assert local == (OTHER, IKE_PORT)
    assert data == b"reply" and src == (OTHER, IKE_PORT)
    assert sources == [(ME, IKE_PORT), (OTHER, IKE_PORT), (ME, IKE_PORT)]


def _unreachable() -> Any:
    rig = Rig(ME)
    try:
        rig.srv.send_ike(Datagram(b"x", ("2001:db8::1", 500), ("2001:db8::2", 500)))  # no v6 socket here
        rig.srv.send_ike(Datagram(b"x", (ME, IKE_PORT), ("198.19.0.9", 500)))  # no route in this namespace
        return rig.srv.stats.send_errors
    finally:
        rig.close()


def test_send_failures_are_counted_not_raised() -> None:
    assert run_in_private_netns(_unreachable) == 2


def _handover() -> Any:
    handed: list[Any] = []
    out = {}
    for listen in ([ME], ["0.0.0.0"], [ME, OTHER]):
        loop = asyncio.new_event_loop()
        srv = UdpServer(loop, listen, IKE_PORT, NATT_PORT)
        srv.start()
        try:
            out[",".join(listen)] = srv.hand_natt_to(lambda sock, cb: handed.append((sock.getsockname(), cb)))
        finally:
            srv.close()
            loop.close()
    # a data plane that refuses: iked keeps reading, and the marker path still works
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    srv = UdpServer(loop, [ME], IKE_PORT, NATT_PORT, on_ike=lambda d, loc, rem: got.append(d))
    srv.start()
    try:

        def refuse(sock: socket.socket, cb: Any) -> None:
            raise RuntimeError("not here")

        out["refused"] = srv.hand_natt_to(refuse)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(NON_ESP_MARKER + b"still-ike", (ME, NATT_PORT))
        loop.run_until_complete(asyncio.sleep(0.05))
        peer.close()
    finally:
        srv.close()
        loop.close()
    return out, [h[0] for h in handed], got


def test_natt_sockets_go_to_the_data_plane_only_when_bound_to_one_address() -> None:
    counts, handed, got = run_in_private_netns(_handover)
    assert counts == {ME: 1, "0.0.0.0": 0, f"{ME},{OTHER}": 0, "refused": 0}
    assert handed == [(ME, NATT_PORT)]
    assert got == [b"still-ike"]
