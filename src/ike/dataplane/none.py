"""The `none` data plane: negotiation only (tests, benchmarks). Accepts installs, carries nothing."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from ike.dataplane.base import AcquireCallback, ChildCounters, DataPlaneError, ExpiryCallback, IkeHandler, UdpSender
from ike.policy import TrafficSelector
from ike.proto.api import Address, ChildSaEstablished


class NoneDataPlane:
    name = "none"

    def __init__(self) -> None:
        self.children: dict[int, ChildSaEstablished] = {}
        self.esp_received = 0  # ESP datagrams handed to us and dropped
        # No traffic ever reaches this plane, so a trap never fires; kept so tests can see it was set.
        self.traps: dict[int, tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.children.clear()
        self.traps.clear()

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

    def trap(self, trap_id: int, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        self.traps[trap_id] = (tuple(local_ts), tuple(remote_ts))

    def untrap(self, trap_id: int) -> None:
        self.traps.pop(trap_id, None)

    def set_acquire_callback(self, cb: AcquireCallback) -> None:
        return None

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
