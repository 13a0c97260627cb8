"""Kernel ESP-in-UDP on the NAT-T sockets with the XFRM data plane, wildcard listen included.

What this kernel does with UDP_ENCAP_ESPINUDP on a real socket (IPv4 and IPv6 wildcard binds), and
which sockets iked's UdpServer marks for which data plane. Each case runs in a private network
namespace (the daemon tests' iked_privnet helper) on 198.18.0.0/15 and loopback addresses.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))

from iked_privnet import run_in_private_netns

from ike.daemon.server import NATT_KEEPALIVE, NON_ESP_MARKER, UdpServer
from ike.dataplane.none import NoneDataPlane
from ike.dataplane.xfrm import UDP_ENCAP, UDP_ENCAP_ESPINUDP, XfrmDataPlane

ME = "198.18.0.1"
IKE_PORT, NATT_PORT = 1500, 14500
ESP = b"\x00\x00\x10\x01" + bytes(60)  # non-zero SPI: ESP to the kernel, which has no SA for it


def encap_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_UDP, UDP_ENCAP)


def _kernel() -> Any:
    """decap_udp_socket on wildcard sockets: the kernel takes ESP and keepalives, IKE keeps its marker."""
    out = {}
    for fam, wild, lo in ((socket.AF_INET, "0.0.0.0", "127.0.0.1"), (socket.AF_INET6, "::", "::1")):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((wild, NATT_PORT))
        before = encap_of(s)
        XfrmDataPlane().decap_udp_socket(s)
        s.settimeout(0.3)
        peer = socket.socket(fam, socket.SOCK_DGRAM)
        for d in (NON_ESP_MARKER + b"ike-1", ESP, NATT_KEEPALIVE, NON_ESP_MARKER + b"ike-2"):
            peer.sendto(d, (lo, NATT_PORT))
        got = []
        try:
            while True:
                got.append(s.recv(200))
        except TimeoutError:
            pass
        out[wild] = (before, encap_of(s), got)
        s.close()
        peer.close()
    return out


def test_kernel_takes_esp_off_a_wildcard_socket_and_leaves_ike() -> None:
    out = run_in_private_netns(_kernel)
    for wild in ("0.0.0.0", "::"):
        before, after, got = out[wild]
        assert (before, after) == (0, UDP_ENCAP_ESPINUDP), wild
        assert got == [NON_ESP_MARKER + b"ike-1", NON_ESP_MARKER + b"ike-2"], wild


def _server(listen: list[str], plane: str) -> Any:
    loop = asyncio.new_event_loop()
    ike: list[tuple[bytes, Any]] = []
    esp: list[bytes] = []
    srv = UdpServer(
        loop,
        listen,
        IKE_PORT,
        NATT_PORT,
        on_ike=lambda d, local, _r: ike.append((d, local)),
        on_esp=lambda d, _l, _r: esp.append(d),
    )
    srv.start()
    dp: Any = XfrmDataPlane() if plane == "xfrm" else NoneDataPlane()
    loop.run_until_complete(dp.start())  # as iked: the plane starts before the sockets are handed over
    try:
        handed = srv.hand_natt_to(dp.attach_udp_socket)
        encap = {(s.getsockname()[0], s.getsockname()[1]): encap_of(s) for s in srv.sockets()}
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("198.18.0.3", 0))
        peer.sendto(NON_ESP_MARKER + b"ike", (ME, NATT_PORT))
        peer.sendto(ESP, (ME, NATT_PORT))
        loop.run_until_complete(asyncio.sleep(0.1))
        peer.close()
    finally:
        loop.run_until_complete(dp.close())
        srv.close()
        loop.close()
    return handed, encap, ike, esp


def test_xfrm_wildcard_listen_marks_every_natt_socket_and_iked_keeps_reading_ike() -> None:
    handed, encap, ike, esp = run_in_private_netns(lambda: _server(["0.0.0.0", "::"], "xfrm"))
    assert handed == 0  # wildcard sockets stay with iked (it needs each datagram's local address)
    assert encap == {
        ("0.0.0.0", IKE_PORT): 0,
        ("0.0.0.0", NATT_PORT): UDP_ENCAP_ESPINUDP,
        ("::", IKE_PORT): 0,
        ("::", NATT_PORT): UDP_ENCAP_ESPINUDP,
    }
    assert ike == [(b"ike", (ME, NATT_PORT))]  # marker stripped, local address learned
    assert esp == []  # the kernel took it: nothing for iked to count and discard


def test_xfrm_specific_listen_hands_the_socket_over_marked() -> None:
    handed, encap, ike, esp = run_in_private_netns(lambda: _server([ME], "xfrm"))
    assert handed == 1
    assert encap == {(ME, IKE_PORT): 0, (ME, NATT_PORT): UDP_ENCAP_ESPINUDP}
    assert [d for d, _ in ike] == [b"ike"] and esp == []


def test_planes_without_kernel_decap_leave_esp_to_iked() -> None:
    # userspace ESP (and none) must see ESP on the socket: no UDP_ENCAP there
    handed, encap, ike, esp = run_in_private_netns(lambda: _server(["0.0.0.0"], "none"))
    assert handed == 0
    assert set(encap.values()) == {0}
    assert [d for d, _ in ike] == [b"ike"] and esp == [ESP]
