"""The data plane interface the daemon uses, and `create_backend`.

The daemon turns each `ChildSaEstablished` into `install(child)` and each delete into `remove(id)`.
`child.child_id` is the key for `remove` and `counters`; it must be unique within one data plane (the
daemon numbers children across engines, e.g. with `dataclasses.replace(child, child_id=n)`).

ESP-in-UDP (RFC 3948) shares port 4500 with IKE. Two ways to wire it, pick one:
- the daemon owns the socket: it passes ESP datagrams (first 4 bytes a non-zero SPI) to
  `receive_udp_esp` and gives `set_udp_sender` a function that sends on that socket;
- faster: the daemon hands the socket to `attach_udp_socket(sock, on_ike)`; the data plane reads it in
  tight non-blocking loops and calls `on_ike(data, local, remote)` for everything that is not ESP
  (non-ESP marker, keepalives), exactly as the datagram arrived.
Either way the daemon calls `bypass_socket(sock)` on every IKE socket (500 and 4500) so that IKE and
ESP to a peer never enter that same peer's tunnel (host-to-host tunnels).
A plane whose kernel decapsulates ESP-in-UDP (xfrm) also offers `decap_udp_socket(sock)`: the daemon
calls it on every port-4500 socket it keeps reading itself (wildcard binds), else that ESP never
reaches the kernel's SAs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ike.policy import TrafficSelector
from ike.proto.api import Address, ChildSaEstablished

log = logging.getLogger("ike.dataplane")

ExpiryCallback = Callable[[int, str], None]  # (child_id, "soft" | "hard")
UdpSender = Callable[[bytes, Address, Address], None]  # (data, local, remote)
IkeHandler = Callable[[bytes, Address, Address], None]  # (datagram, local, remote)
AcquireCallback = Callable[[int], None]  # trap id: an outbound packet matched a trap (see `trap`)

ACQUIRE_INTERVAL_S = 2.0  # a trap reports its traffic at most this often while nothing replaces it


class DataPlaneError(Exception):
    """A request the data plane cannot carry out; the message says what and what to do."""


@dataclass
class ChildCounters:
    bytes_in: int = 0  # inner (cleartext) bytes
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    dropped_in: int = 0  # failed ICV, replay, padding or selector checks
    last_used: float | None = None  # time.monotonic() of the last packet either way
    # Whole KiB the child can still carry before its KB lifetime ends it (the hard limit), counted
    # on whichever of its two SAs is nearer the limit (each direction has the full allowance).
    # None: no KB lifetime. Per child SA: not to be summed across a rekey's old and new SAs.
    kb_left: int | None = None


def kb_left(hard_bytes: int, *used: int) -> int | None:
    """`ChildCounters.kb_left` for SAs that have used `used` bytes of a `hard_bytes` limit each."""
    if not hard_bytes:
        return None
    return max(0, hard_bytes - max(used, default=0)) // 1024


class DataPlane(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Remove every SA, route, rule and policy this plane added."""
        ...

    def install(self, child: ChildSaEstablished) -> None:
        """Both SAs of `child` and the routes/filter rules for its selectors. Raises DataPlaneError."""
        ...

    def remove(self, child_id: int) -> None:
        """Forget a child (unknown ids are ignored: removal is idempotent)."""
        ...

    def counters(self, child_id: int) -> ChildCounters: ...

    def trap(self, trap_id: int, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        """Hold the traffic of these selectors without an SA (strongSwan's trap policy): route it to the
        plane, drop it, and report it through the acquire callback, the first packet at once and then
        at most every ACQUIRE_INTERVAL_S. A child installed later for the same selectors takes the
        traffic over; `untrap` then removes the trap. Raises DataPlaneError if the plane cannot."""
        ...

    def untrap(self, trap_id: int) -> None:
        """Remove a trap (unknown ids are ignored)."""
        ...

    def set_acquire_callback(self, cb: AcquireCallback) -> None: ...

    def set_expiry_callback(self, cb: ExpiryCallback) -> None: ...

    def receive_udp_esp(self, data: bytes, local: Address, remote: Address) -> None: ...

    def set_udp_sender(self, send: UdpSender) -> None: ...

    def attach_udp_socket(self, sock: socket.socket, on_ike: IkeHandler) -> None: ...

    def bypass_socket(self, sock: socket.socket) -> None: ...


BACKENDS = ("auto", "userspace", "xfrm", "none")


def create_backend(name: str, **options: Any) -> DataPlane:
    """`name`: userspace | xfrm | none | auto (xfrm when the kernel can hold an ESP SA, else userspace).
    Options go to the backend (userspace: tun_name, mtu, table, mark, rule_priority, replay_window)."""
    if name == "none":
        from ike.dataplane.none import NoneDataPlane

        return NoneDataPlane()
    if name == "userspace":
        from ike.dataplane.userspace import UserspaceDataPlane

        return UserspaceDataPlane(**options)
    if name in ("xfrm", "auto"):
        from ike.dataplane.xfrm import XfrmDataPlane, probe_esp

        ok, why = probe_esp()
        if ok:
            log.info("data plane: kernel XFRM (the kernel accepted a test ESP SA)")
            xopts = {k: v for k, v in options.items() if k in ("replay_window",)}
            return XfrmDataPlane(**xopts)
        if name == "xfrm":
            raise DataPlaneError(f"the kernel XFRM data plane is not usable here: {why}; use dataplane=userspace")
        log.warning("data plane: kernel XFRM cannot hold ESP SAs (%s); using userspace ESP over TUN", why)
        from ike.dataplane.userspace import UserspaceDataPlane

        return UserspaceDataPlane(**options)
    raise DataPlaneError(f"unknown data plane {name!r}; use one of {', '.join(BACKENDS)}")
