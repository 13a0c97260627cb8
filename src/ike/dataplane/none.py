"""The `none` data plane: negotiation only (tests, benchmarks). Accepts installs, carries nothing."""

from __future__ import annotations

import socket

from ike.dataplane.base import ChildCounters, DataPlaneError, ExpiryCallback, IkeHandler, UdpSender
from ike.proto.api import Address, ChildSaEstablished


class NoneDataPlane:
    name = "none"

    def __init__(self) -> None:
        self.children: dict[int, ChildSaEstablished] = {}
        self.esp_received = 0  # ESP datagrams handed to us and dropped

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.children.clear()

    def install(self, child: ChildSaEstablished) -> None:
        if child.child_id in self.children:
            raise DataPlaneError(f"child SA {child.child_id} is already installed; remove it first")
        self.children[child.child_id] = child

    def remove(self, child_id: int) -> None:
        self.children.pop(child_id, None)

    def counters(self, child_id: int) -> ChildCounters:
        if child_id not in self.children:
            raise DataPlaneError(f"no child SA {child_id} is installed")
        return ChildCounters()

    def set_expiry_callback(self, cb: ExpiryCallback) -> None:
        return None

    def receive_udp_esp(self, data: bytes, local: Address, remote: Address) -> None:
        self.esp_received += 1

    def set_udp_sender(self, send: UdpSender) -> None:
        return None

    def attach_udp_socket(self, sock: socket.socket, on_ike: IkeHandler) -> None:
        raise DataPlaneError("the none data plane does not read sockets; let the daemon read port 4500 itself")

    def bypass_socket(self, sock: socket.socket) -> None:
        return None
