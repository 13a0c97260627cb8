"""Userspace ESP over a TUN device: the data plane for kernels without ESP.

Outbound: the kernel routes traffic for each child's remote selectors into the TUN device (`ike0`);
we read it, find the child in the SPD (longest-prefix dicts, see spd.py), encrypt with that child's
EspSa and send it as ESP-in-UDP (port 4500) or plain ESP (a raw IP protocol 50 socket). The ESP of one
read batch leaves in one sendmmsg per socket (batch.py), ESP-in-UDP grouped into UDP GSO messages.
Inbound: ESP -> SA by SPI (a dict) -> decrypt -> the inner packet must match the child's selectors ->
written to the TUN device, from where the kernel delivers or forwards it.

Routes go into a table of their own (default 4501), consulted by the rule `not fwmark MARK lookup
TABLE`. Our ESP sockets and the daemon's IKE sockets carry MARK (SO_MARK, see `bypass_socket`), so
for a host-to-host tunnel, where the peer's own address is routed into the tunnel, the IKE and ESP
packets to that peer still leave by the normal route instead of looping into the TUN device. Per
child, routes are added and removed over rtnetlink (netlink.py), not by running `ip`: installs run
on the daemon's loop, and a fork there stalls every tunnel.

Transport mode (host-to-host children): the IP header comes off before ESP and is rebuilt after,
with the RFC 3948 checksum handling for ESP-in-UDP (transport.py).

Inbound policy: cleartext from a child's remote selectors to its local ones that did not come through
the TUN device is dropped by an nftables table of this plane (nftfilter.py), updated per child.

All I/O runs on the daemon's asyncio loop with non-blocking descriptors that are drained in tight
loops per wake-up (`add_reader`), so one wake-up moves a batch of packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ike.dataplane.base import (
    ACQUIRE_INTERVAL_S,
    AcquireCallback,
    ChildCounters,
    DataPlaneError,
    ExpiryCallback,
    IkeHandler,
    UdpSender,
    kb_left,
)
from ike.dataplane.batch import BatchSender, Destination
from ike.dataplane.esp import NH_IPV4, NH_IPV6, EspError, EspSa, Lifetime, SaExpiredError
from ike.dataplane.gro import PLAIN, VNET_HDR_LEN, Coalescer
from ike.dataplane.netlink import (
    NETLINK_ROUTE,
    RT_SCOPE_LINK,
    AddressWatch,
    NetlinkError,
    NetlinkSocket,
    delroute_msg,
    newroute_msg,
)
from ike.dataplane.nftfilter import FilterError, InboundFilter
from ike.dataplane.spd import SelectorSet, Spd, cidr_blocks
from ike.dataplane.transport import Reassembler, Rebuild, strip
from ike.policy import TrafficSelector
from ike.proto.api import Address, ChildSaEstablished

log = logging.getLogger("ike.dataplane.userspace")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IPPROTO_ESP = 50
SO_MARK = getattr(socket, "SO_MARK", 36)

DEFAULT_TUN = "ike0"
DEFAULT_MTU = 1400  # fits ESP-in-UDP over IPv6 with CBC+HMAC-SHA-512 into a 1500-byte path
DEFAULT_TABLE = 4501
DEFAULT_MARK = 0x494B45  # "IKE"
DEFAULT_RULE_PRIORITY = 4501
BATCH = 256  # packets per wake-up before yielding to the rest of the loop
SOL_UDP = 17
UDP_GRO = 104  # UDP GRO (Linux 5.0): one receive, many datagrams of one size
GSO_MAX_SEGS = 64
GSO_MAX_BYTES = 60000
SOCK_BUF = 4 << 20  # bytes; absorbs bursts while the loop is busy (a full raw ESP socket also makes
# the kernel answer with ICMP protocol-unreachable, which must not happen in normal operation)


def _big_buffers(sock: socket.socket) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)


Route = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DataPlaneError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class _Out:
    """What the TUN reader needs for one outbound SA: the sender of its socket (raw ESP or the
    attached port-4500 socket) and the peer's address packed once, or, when the daemon owns port
    4500, `send`, which hands one packet to the daemon."""

    sa: EspSa
    child_id: int
    queue: BatchSender | None = None
    dest: Destination | None = None
    udp: bool = False  # on a UDP socket: packets of one size to one peer may share a UDP GSO message
    send: Callable[[bytes], object] | None = None
    transport: bool = False  # send the payload without its IP header (transport mode)


@dataclass
class _Trap:
    """Selectors held without an SA: their packets are dropped and reported (an acquire)."""

    trap_id: int
    routes: list[Route]
    last_acquire: float = float("-inf")


def _trap_key(trap_id: int) -> int:
    return -trap_id  # SPD and filter keys: children are positive, traps negative


@dataclass
class _In:
    sa: EspSa
    selectors: SelectorSet
    child_id: int
    dropped: int = 0
    rebuild: Rebuild | None = None  # transport mode: puts the IP header back


@dataclass
class _Child:
    child: ChildSaEstablished
    out: _Out
    inn: _In
    routes: list[Route]  # routed into the TUN
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)
    last_packets: int = 0
    last_used: float | None = None


class UserspaceDataPlane:
    name = "userspace"

    def __init__(
        self,
        tun_name: str = DEFAULT_TUN,
        mtu: int = DEFAULT_MTU,
        table: int = DEFAULT_TABLE,
        mark: int = DEFAULT_MARK,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        replay_window: int = 64,
        soft_fraction: float = 0.9,
        coalesce: bool = True,
        inbound_filter: bool = True,
        nft_table: str | None = None,
    ) -> None:
        if len(tun_name.encode()) > 15:
            raise DataPlaneError(f"TUN device name {tun_name!r} is longer than 15 bytes")
        self.tun_name, self.mtu, self.table, self.mark = tun_name, mtu, table, mark
        self.rule_priority, self.replay_window, self.soft_fraction = rule_priority, replay_window, soft_fraction
        # With a virtio-net header on the TUN device, received TCP segments are handed to the kernel
        # merged (gro.py); without it every packet is written alone.
        self.coalesce = coalesce
        # Cleartext that should have arrived through a tunnel is dropped by nftables (nftfilter.py).
        self._filter: InboundFilter | None = InboundFilter(tun_name, nft_table) if inbound_filter else None
        self._gro: Coalescer | None = None
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tun_fd = -1
        self._raw: dict[int, socket.socket] = {}  # family -> raw ESP socket
        self._udp: dict[int, socket.socket] = {}  # family -> attached port-4500 socket
        self._raw_q: dict[int, BatchSender] = {}  # family -> sender of the raw ESP socket
        self._udp_q: dict[int, BatchSender] = {}  # family -> sender of the attached port-4500 socket
        self._queues: list[BatchSender] = []  # all of them, flushed after each TUN read batch
        self._pending_udp: list[tuple[socket.socket, IkeHandler]] = []
        self._udp_sender: UdpSender | None = None
        self._expiry_cb: ExpiryCallback | None = None
        self._children: dict[int, _Child] = {}
        self._in: dict[int, _In] = {}  # inbound SPI -> SA
        self._spd: Spd[_Out | _Trap] = Spd()
        self._traps: dict[int, _Trap] = {}
        self._acquire_cb: AcquireCallback | None = None
        self._route_refs: dict[Route, int] = {}
        self._ifindex = 0
        self._rt: NetlinkSocket | None = None
        self._addrs: AddressWatch | None = None
        # plane-wide drop counters (no SA to charge them to)
        self.no_policy = 0
        self.unknown_spi = 0
        self.send_errors = 0
        self._reasm = Reassembler()  # transport mode: datagrams the kernel fragmented to the TUN MTU
        # ESP packets above this (reassembled transport-mode datagrams) are sent alone, not in a UDP GSO
        # batch: the kernel refuses GSO segments larger than the path MTU.
        self._gso_seg_max = mtu + 128
        self._last_err_log = 0.0
        self.udp_gso = True  # cleared the first time the kernel refuses a UDP GSO send

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise DataPlaneError(f"cannot open /dev/net/tun ({e.strerror}): the userspace data plane needs root") from e
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if self.coalesce else 0)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", self.tun_name.encode(), flags))
        except OSError as e:
            os.close(fd)
            raise DataPlaneError(f"cannot create TUN device {self.tun_name} ({e.strerror}); is it in use?") from e
        self._tun_fd = fd
        try:
            self._ifindex = socket.if_nametoindex(self.tun_name)
            self._rt = NetlinkSocket(NETLINK_ROUTE, "a route")
            self._addrs = AddressWatch(self._rt)
        except (OSError, DataPlaneError) as e:
            self._close_netlink()
            os.close(fd)
            self._tun_fd = -1
            raise DataPlaneError(f"cannot set up routing for {self.tun_name}: {e}") from e
        if self.coalesce:
            self._gro = Coalescer(lambda bufs: os.writev(fd, bufs))
        _ip("link", "set", "dev", self.tun_name, "mtu", str(self.mtu), "txqueuelen", "2000", "up")
        for fam in ("-4", "-6"):
            # A rule left by a crashed run would double up; remove before adding.
            while _ip(fam, "rule", "del", "priority", str(self.rule_priority), check=False).returncode == 0:
                pass
            _ip(fam, "route", "flush", "table", str(self.table), check=False)
            _ip(
                fam,
                "rule",
                "add",
                "priority",
                str(self.rule_priority),
                "not",
                "fwmark",
                hex(self.mark),
                "table",
                str(self.table),
            )
        if self._filter is not None:
            self._filter.start()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                s = socket.socket(family, socket.SOCK_RAW, IPPROTO_ESP)
            except OSError as e:
                log.warning("no raw ESP socket for %s (%s): plain ESP unavailable", family.name, e.strerror)
                continue
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
            _big_buffers(s)
            self._raw[family] = s
            self._raw_q[family] = q = BatchSender(s)
            self._queues.append(q)
            self._loop.add_reader(s.fileno(), self._on_raw, s, family == socket.AF_INET)
        self._loop.add_reader(fd, self._on_tun)
        for sock, on_ike in self._pending_udp:
            self._register_udp(sock, on_ike)
        self._pending_udp.clear()
        log.info(
            "userspace ESP data plane on %s (mtu %d, table %d, mark %#x)",
            self.tun_name,
            self.mtu,
            self.table,
            self.mark,
        )

    async def close(self) -> None:
        for cid in list(self._children):
            self.remove(cid)
        for tid in list(self._traps):
            self.untrap(tid)
        loop = self._loop
        if loop is not None:
            for s in list(self._raw.values()) + list(self._udp.values()):
                with contextlib.suppress(Exception):
                    loop.remove_reader(s.fileno())
            if self._tun_fd >= 0:
                loop.remove_reader(self._tun_fd)
        for s in self._raw.values():
            s.close()
        self._raw.clear()
        self._udp.clear()
        self._raw_q.clear()
        self._udp_q.clear()
        self._queues.clear()
        if self._tun_fd >= 0:
            for fam in ("-4", "-6"):
                _ip(fam, "rule", "del", "priority", str(self.rule_priority), check=False)
                _ip(fam, "route", "flush", "table", str(self.table), check=False)
            os.close(self._tun_fd)  # the TUN device disappears with its last descriptor
            self._tun_fd = -1
        self._close_netlink()
        if self._filter is not None:
            self._filter.close()

    def _close_netlink(self) -> None:
        if self._addrs is not None:
            self._addrs.close()
            self._addrs = None
        if self._rt is not None:
            self._rt.close()
            self._rt = None

    @property
    def not_whole(self) -> int:
        """Transport mode: fragments given up and packets with IPv6 extension headers, dropped."""
        return self._reasm.dropped

    # -- wiring to the daemon ----------------------------------------------------------------------

    def set_expiry_callback(self, cb: ExpiryCallback) -> None:
        self._expiry_cb = cb

    def set_udp_sender(self, send: UdpSender) -> None:
        self._udp_sender = send

    def bypass_socket(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        except OSError as e:
            raise DataPlaneError(f"cannot mark socket for tunnel bypass (SO_MARK: {e.strerror}); needs root") from e

    def attach_udp_socket(self, sock: socket.socket, on_ike: IkeHandler) -> None:
        sock.setblocking(False)
        self.bypass_socket(sock)
        _big_buffers(sock)
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            pass  # older kernel: datagrams arrive one by one
        if self._loop is None:
            self._pending_udp.append((sock, on_ike))
        else:
            self._register_udp(sock, on_ike)

    def _register_udp(self, sock: socket.socket, on_ike: IkeHandler) -> None:
        assert self._loop is not None
        self._udp[sock.family] = sock
        # children installed before keep the sender of the socket they had: it stays in the flush list
        self._udp_q[sock.family] = q = BatchSender(sock)
        self._queues.append(q)
        local = sock.getsockname()[:2]
        self._loop.add_reader(sock.fileno(), self._on_udp, sock, (local[0], local[1]), on_ike)

    def receive_udp_esp(self, data: bytes, local: Address, remote: Address) -> None:
        self._esp_in(data)
        # datagrams handed over one by one: merge what arrives within one loop iteration
        if self._gro is not None and not self._flush_pending and self._loop is not None:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._gro is not None:
            try:
                self._gro.flush()
            except OSError:
                self.send_errors += 1

    # -- installing --------------------------------------------------------------------------------

    def install(self, child: ChildSaEstablished) -> None:
        cid = child.child_id
        if cid in self._children:
            raise DataPlaneError(f"child SA {cid} is already installed; remove it first")
        if self._tun_fd < 0 or self._loop is None:
            raise DataPlaneError("the userspace data plane is not started")
        if child.protocol != "esp":
            raise DataPlaneError(f"child SA {cid}: the userspace data plane carries ESP only, not {child.protocol}")
        if child.mode not in ("tunnel", "transport"):
            raise DataPlaneError(f"child SA {cid}: mode {child.mode!r} is neither tunnel nor transport")
        rebuild = None
        if child.mode == "transport":
            # behind a NAT the kernel is told to trust inner checksums when it can be (virtio-net header)
            child, rebuild = _transport_view(child, partial=self._gro is not None and child.udp_encap)
        in_spi = int.from_bytes(child.inbound.spi, "big")
        if in_spi in self._in:
            raise DataPlaneError(f"child SA {cid}: inbound SPI {in_spi:#010x} is already in use")
        p = child.proposal
        now = self._loop.time()
        lifetime = Lifetime.from_negotiated(child.lifetime_s, child.lifetime_kb, self.soft_fraction, esn=p.esn)
        try:
            out_sa = EspSa(
                child.outbound.spi,
                p.encr,
                p.encr_keylen,
                child.outbound.enc_key,
                p.integ,
                child.outbound.integ_key,
                esn=p.esn,
                replay_window=0,
                lifetime=lifetime,
                now=now,
            )
            in_sa = EspSa(
                child.inbound.spi,
                p.encr,
                p.encr_keylen,
                child.inbound.enc_key,
                p.integ,
                child.inbound.integ_key,
                esn=p.esn,
                replay_window=self.replay_window,
                lifetime=lifetime,
                now=now,
            )
        except EspError as e:
            raise DataPlaneError(f"child SA {cid}: {e}") from e
        out = self._out_for(child, out_sa)
        out.transport = rebuild is not None
        inn = _In(in_sa, SelectorSet(child.local_ts, child.remote_ts), cid, rebuild=rebuild)
        rec = _Child(child, out, inn, [])
        out_sa.on_limit = lambda kind: self._limit(cid, kind)
        in_sa.on_limit = lambda kind: self._limit(cid, kind)
        if self._filter is not None:
            try:
                self._filter.add(cid, child.local_ts, child.remote_ts)
            except FilterError as e:
                raise DataPlaneError(f"child SA {cid}: {e}") from e
        try:
            self._add_routes(child.local_ts, child.remote_ts, rec.routes, f"child SA {cid}")
        except DataPlaneError:
            self._del_routes(rec.routes)
            if self._filter is not None:
                self._filter.remove(cid)
            raise
        self._children[cid] = rec
        self._in[in_spi] = inn
        self._spd.add(cid, child.local_ts, child.remote_ts, out)
        for sa in (out_sa,):
            self._arm_timer(rec, sa)
        log.info(
            "installed child SA %d: %s <-> %s, SPIs in %s out %s, %s%s%s",
            cid,
            ",".join(map(str, child.local_ts)),
            ",".join(map(str, child.remote_ts)),
            child.inbound.spi.hex(),
            child.outbound.spi.hex(),
            p,
            ", ESP-in-UDP" if child.udp_encap else "",
            ", transport mode" if rebuild is not None else "",
        )

    def _out_for(self, child: ChildSaEstablished, sa: EspSa) -> _Out:
        remote_ip, remote_port = child.remote
        fam = socket.AF_INET6 if ipaddress.ip_address(remote_ip).version == 6 else socket.AF_INET
        cid = child.child_id

        def dest(port: int) -> Destination:
            try:
                return Destination(fam, remote_ip, port)
            except (ValueError, OSError) as e:
                raise DataPlaneError(f"child SA {cid}: cannot send to the peer address {remote_ip!r}: {e}") from e

        if child.udp_encap:
            q = self._udp_q.get(fam)
            if q is not None:
                return _Out(sa, cid, q, dest(remote_port), udp=True)
            if self._udp_sender is None:
                raise DataPlaneError(
                    f"child SA {cid} uses UDP encapsulation but no port-4500 socket is attached "
                    "and no UDP sender is set (call attach_udp_socket or set_udp_sender first)"
                )
            local, remote = child.local, child.remote

            def via_daemon(data: bytes) -> None:
                assert self._udp_sender is not None
                self._udp_sender(data, local, remote)

            return _Out(sa, cid, send=via_daemon)
        raw = self._raw_q.get(fam)
        if raw is None:
            raise DataPlaneError(f"child SA {cid} uses plain ESP but no raw ESP socket could be opened")
        return _Out(sa, cid, raw, dest(0))

    def _local_addresses(self) -> list[IpAddress]:
        """Our addresses other than link-local ones (from a cache that address changes refresh)."""
        assert self._addrs is not None
        return [a.address for a in self._addrs.addresses() if a.scope != RT_SCOPE_LINK]

    def _add_routes(
        self,
        local_ts: Sequence[TrafficSelector],
        remote_ts: Sequence[TrafficSelector],
        routes: list[Route],
        what: str,
    ) -> None:
        """Route `remote_ts` into the TUN device, appending each route taken (ref-counted) to `routes`."""
        assert self._rt is not None
        locals_: list[IpAddress] | None = None
        for ts in remote_ts:
            net_type = ipaddress.IPv4Network if ts.version == 4 else ipaddress.IPv6Network
            nets = [net_type(b) for b in cidr_blocks(ts)]
            new = [n for n in nets if n not in self._route_refs]
            src: IpAddress | None = None
            if new:
                if locals_ is None:
                    locals_ = self._local_addresses()
                # Source hint: one of our own addresses inside the local selectors, so that traffic the
                # gateway itself originates is matched by the SA.
                src = next(
                    (
                        a
                        for lts in local_ts
                        if lts.version == ts.version
                        for a in locals_
                        if a.version == ts.version and int(lts.start) <= int(a) <= int(lts.end)
                    ),
                    None,
                )
            for net in nets:
                if net not in self._route_refs:
                    how = f"{what}: routing {net} into {self.tun_name}, table {self.table}"
                    how += f", source {src}" if src else ""
                    # a refusal raises NetlinkError (a DataPlaneError): what, the errno text, the kernel's reason
                    self._rt.request(newroute_msg(net, self._ifindex, self.table, src), how)
                    self._route_refs[net] = 0
                self._route_refs[net] += 1
                routes.append(net)

    def _del_routes(self, routes: list[Route]) -> None:
        for net in routes:
            n = self._route_refs.get(net, 0) - 1
            if n <= 0:
                self._route_refs.pop(net, None)
                if self._rt is None:
                    continue
                try:
                    self._rt.request(
                        delroute_msg(net, self._ifindex, self.table),
                        f"removing the route {net} from {self.tun_name} (table {self.table})",
                    )
                except NetlinkError as e:
                    if e.errno != errno.ESRCH:  # gone already (the device went away): nothing to do
                        log.warning("%s", e)
                except DataPlaneError as e:
                    log.warning("%s", e)
            else:
                self._route_refs[net] = n
        routes.clear()

    def remove(self, child_id: int) -> None:
        rec = self._children.pop(child_id, None)
        if rec is None:
            return
        for t in rec.timers:
            t.cancel()
        self._in.pop(rec.inn.sa.spi, None)
        self._spd.remove(child_id)
        self._del_routes(rec.routes)
        if self._filter is not None:
            self._filter.remove(child_id)
        log.info("removed child SA %d", child_id)

    # -- traps (held traffic) ----------------------------------------------------------------------

    def set_acquire_callback(self, cb: AcquireCallback) -> None:
        self._acquire_cb = cb

    def trap(self, trap_id: int, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        if trap_id <= 0:
            raise DataPlaneError(f"trap id {trap_id} must be positive")
        if self._tun_fd < 0:
            raise DataPlaneError("the userspace data plane is not started")
        self.untrap(trap_id)
        key = _trap_key(trap_id)
        t = _Trap(trap_id, [])
        if self._filter is not None:
            try:
                self._filter.add(key, local_ts, remote_ts)
            except FilterError as e:
                raise DataPlaneError(f"trap {trap_id}: {e}") from e
        try:
            self._add_routes(local_ts, remote_ts, t.routes, f"trap {trap_id}")
        except DataPlaneError:
            self._del_routes(t.routes)
            if self._filter is not None:
                self._filter.remove(key)
            raise
        self._traps[trap_id] = t
        self._spd.add(key, local_ts, remote_ts, t)
        log.info(
            "trap %d: holding %s <-> %s until a tunnel carries it",
            trap_id,
            ",".join(map(str, local_ts)),
            ",".join(map(str, remote_ts)),
        )

    def untrap(self, trap_id: int) -> None:
        t = self._traps.pop(trap_id, None)
        if t is None:
            return
        key = _trap_key(trap_id)
        self._spd.remove(key)
        self._del_routes(t.routes)
        if self._filter is not None:
            self._filter.remove(key)
        log.info("trap %d removed", trap_id)

    def _acquire(self, t: _Trap) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - t.last_acquire < ACQUIRE_INTERVAL_S or self._acquire_cb is None:
            return
        t.last_acquire = now
        # Not from inside the TUN read loop: the daemon starts a negotiation in answer.
        self._loop.call_soon(self._acquire_cb, t.trap_id)

    # -- counters and expiry -----------------------------------------------------------------------

    def counters(self, child_id: int) -> ChildCounters:
        rec = self._children.get(child_id)
        if rec is None:
            raise DataPlaneError(f"no child SA {child_id} is installed")
        o, i = rec.out.sa, rec.inn.sa
        total = o.packets + i.packets
        if total != rec.last_packets:  # traffic since the last look: it was used by now at the latest
            rec.last_packets, rec.last_used = total, time.monotonic()
        left = kb_left(o.lifetime.hard_bytes, o.bytes, i.bytes)  # both count inner bytes, as the limit does
        return ChildCounters(i.bytes, o.bytes, i.packets, o.packets, rec.inn.dropped, rec.last_used, left)

    def _arm_timer(self, rec: _Child, sa: EspSa) -> None:
        assert self._loop is not None
        when = sa.next_time_limit()
        if when is not None:
            rec.timers.append(self._loop.call_at(when, self._time_limit, rec, sa))

    def _time_limit(self, rec: _Child, sa: EspSa) -> None:
        assert self._loop is not None
        kind = sa.check_time(self._loop.time())
        if kind is not None:
            # the inbound SA of the child shares the lifetime; end both together
            other = rec.inn.sa if sa is rec.out.sa else rec.out.sa
            other.check_time(self._loop.time())
        self._arm_timer(rec, sa)

    def _limit(self, child_id: int, kind: str) -> None:
        rec = self._children.get(child_id)
        if rec is None or kind in rec.fired:
            return
        rec.fired.add(kind)
        log.info("child SA %d reached its %s lifetime", child_id, kind)
        if self._expiry_cb is not None:
            try:
                self._expiry_cb(child_id, kind)
            except Exception:
                log.exception("expiry callback failed for child SA %d", child_id)

    # -- hot paths ---------------------------------------------------------------------------------

    def _on_tun(self) -> None:
        fd = self._tun_fd
        read = os.read
        lookup = self._spd.lookup
        vnet = self._gro is not None
        # ESP-in-UDP packets of one size to one peer are collected into one UDP GSO message
        batch: list[bytes] = []
        bq: BatchSender | None = None  # the open GSO message's sender and peer (set while batch is not empty)
        bdest: Destination | None = None
        seg = total = 0
        gso = self.udp_gso
        try:
            for _ in range(BATCH):
                try:
                    pkt = read(fd, 65536)
                except BlockingIOError:
                    return
                except OSError as e:
                    self._rate_log("reading %s failed: %s", self.tun_name, e)
                    return
                if vnet:
                    pkt = pkt[VNET_HDR_LEN:]
                out = lookup(pkt)
                if out is None:
                    self.no_policy += 1
                    continue
                if isinstance(out, _Trap):
                    self._acquire(out)
                    continue
                try:
                    if out.transport:
                        whole = strip(pkt)
                        if whole is None:
                            whole = self._reasm.add(pkt)
                            if whole is None:  # more fragments to come (or dropped: counted)
                                continue
                        esp = out.sa.encapsulate(whole[1], whole[0])
                    else:
                        esp = out.sa.encapsulate(pkt, NH_IPV4 if pkt[0] >> 4 == 4 else NH_IPV6)
                except SaExpiredError:
                    continue
                q, dest = out.queue, out.dest
                if q is None or dest is None:
                    assert out.send is not None
                    try:
                        out.send(esp)
                    except OSError:
                        self.send_errors += 1  # full socket buffer or unreachable: drop, as a router would
                    continue
                n = len(esp)
                if not out.udp or not gso or n > self._gso_seg_max:
                    q.add(esp, dest)
                    continue
                if (
                    bq is not None
                    and bdest is not None
                    and batch
                    and (
                        q is not bq
                        or (dest is not bdest and dest.addr != bdest.addr)
                        or n > seg
                        or len(batch[-1]) != seg  # only the last datagram of a GSO message may be short
                        or total + n > GSO_MAX_BYTES
                        or len(batch) >= GSO_MAX_SEGS
                    )
                ):
                    bq.add_gso(batch, seg, bdest)
                    batch = []
                if not batch:
                    bq, bdest, seg, total = q, dest, n, 0
                batch.append(esp)
                total += n
        finally:
            if batch and bq is not None and bdest is not None:
                bq.add_gso(batch, seg, bdest)
            self._flush_sends()

    def _flush_sends(self) -> None:
        for q in self._queues:
            self.send_errors += q.flush()  # full socket buffer or unreachable: dropped, as a router would
            if q.gso_refused and self.udp_gso:
                log.info("UDP GSO send refused (%s): sending datagrams one by one", os.strerror(q.gso_refused))
                self.udp_gso = False

    def _on_udp(self, sock: socket.socket, local: Address, on_ike: IkeHandler) -> None:
        try:
            self._drain_udp(sock, local, on_ike)
        finally:
            self._flush()

    def _drain_udp(self, sock: socket.socket, local: Address, on_ike: IkeHandler) -> None:
        recvmsg = sock.recvmsg
        esp_in_many = self._esp_in_many
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = recvmsg(65536, 64)
            except BlockingIOError:
                return
            except OSError as e:  # ICMP errors surface here on UDP sockets; keep reading
                self._rate_log("port 4500 socket: %s", e)
                continue
            seg = 0
            for level, kind, val in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(val[:4], sys.byteorder)
            if seg and len(data) > seg:  # several datagrams of `seg` bytes (the last may be shorter)
                mv = memoryview(data)
                dgrams: Sequence[bytes | memoryview] = [mv[off : off + seg] for off in range(0, len(data), seg)]
            else:
                dgrams = (data,)
            esp: list[bytes | memoryview] = []
            for d in dgrams:
                if len(d) > 8 and d[:4] != b"\0\0\0\0":
                    esp.append(d)
                    continue
                if esp:  # keep the order of what came before
                    esp_in_many(esp)
                    esp = []
                try:
                    on_ike(bytes(d), local, (addr[0], addr[1]))
                except Exception:
                    log.exception("IKE handler failed on a datagram from %s", addr[0])
            if esp:
                esp_in_many(esp)

    def _on_raw(self, sock: socket.socket, v4: bool) -> None:
        esp_in = self._esp_in
        try:
            for _ in range(BATCH):
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    return
                except OSError:
                    continue
                # IPv4 raw sockets deliver the IP header too; IPv6 ones do not
                esp_in(memoryview(data)[(data[0] & 0x0F) * 4 :] if v4 else data)
        finally:
            self._flush()

    def _esp_in(self, data: bytes | memoryview) -> None:
        self._esp_in_many((data,))

    def _esp_in_many(self, packets: Sequence[bytes | memoryview]) -> None:
        """ESP packets -> SA by SPI -> decrypt -> selector check -> TUN (via the coalescer)."""
        in_get = self._in.get
        gro_add = self._gro.add if self._gro is not None else None
        for data in packets:
            if len(data) < 8:
                continue
            inn = in_get(int.from_bytes(data[:4], "big"))
            if inn is None:
                self.unknown_spi += 1
                continue
            try:
                nh, inner = inn.sa.decapsulate(data)
            except EspError as e:
                inn.dropped += 1
                self._rate_log("child SA %d: dropped inbound ESP: %s", inn.child_id, e)
                continue
            if nh == 59:  # RFC 4303 dummy packet
                continue
            hdr = PLAIN
            if inn.rebuild is not None:
                inner = inn.rebuild(nh, inner)
                hdr = inn.rebuild.header(nh)
            elif not inner or (inner[0] >> 4) != (4 if nh == NH_IPV4 else 6 if nh == NH_IPV6 else 0):
                inn.dropped += 1
                self._rate_log(
                    "child SA %d: dropped inbound ESP with next header %d (tunnel mode carries IP)", inn.child_id, nh
                )
                continue
            if not inn.selectors.allows(inner):
                inn.dropped += 1
                self._rate_log("child SA %d: dropped a decrypted packet outside the negotiated selectors", inn.child_id)
                continue
            try:
                if gro_add is not None:
                    gro_add(inner, hdr)
                else:
                    os.write(self._tun_fd, inner)
            except OSError:
                self.send_errors += 1

    def _rate_log(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_err_log >= 1.0:
            self._last_err_log = now
            log.warning(msg, *args)


def _transport_view(child: ChildSaEstablished, partial: bool = False) -> tuple[ChildSaEstablished, Rebuild]:
    """A transport-mode child as this plane carries it: only traffic between the two outer addresses,
    so its selectors are narrowed to them (keeping protocol and ports; behind a NAT the negotiated
    selectors name the peer's private address, RFC 7296 §2.23.1), and the header rebuilder for its
    inbound packets, which knows those original addresses for the RFC 3948 checksum fix."""
    cid = child.child_id
    lip, rip = ipaddress.ip_address(child.local[0]), ipaddress.ip_address(child.remote[0])
    if lip.version != rip.version:
        raise DataPlaneError(f"child SA {cid}: transport mode between {lip} and {rip} (two address families)")

    def narrow(
        tss: tuple[TrafficSelector, ...], addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> tuple[tuple[TrafficSelector, ...], str]:
        same = [t for t in tss if t.version == addr.version]
        if not same:
            raise DataPlaneError(
                f"child SA {cid}: transport mode, but no traffic selector of {', '.join(map(str, tss))} is "
                f"of the outer address family (IPv{addr.version})"
            )
        orig = next((str(t.start) for t in same if t.start == t.end), str(addr))
        out = dict.fromkeys(TrafficSelector(addr, addr, t.protocol, t.port_start, t.port_end) for t in same)
        return tuple(out), orig

    local_ts, orig_local = narrow(child.local_ts, lip)
    remote_ts, orig_remote = narrow(child.remote_ts, rip)
    # Without UDP encapsulation no NAT can sit between us: the addresses are the peer's own.
    if not child.udp_encap:
        orig_remote, orig_local = str(rip), str(lip)
    rebuild = Rebuild(str(rip), str(lip), orig_remote, orig_local, partial=partial)
    return dataclasses.replace(child, local_ts=local_ts, remote_ts=remote_ts), rebuild
