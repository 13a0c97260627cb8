"""UDP endpoints for IKE (500) and NAT-T (4500), IPv4 and IPv6, on the asyncio loop.

Wildcard sockets use IP_PKTINFO / IPV6_RECVPKTINFO so each datagram's local address is known
(an engine must answer from the address the peer used) and sends set the source address the
same way. Port 4500 carries IKE behind a 4-byte zero non-ESP marker (RFC 3948 §2.2), ESP
otherwise, and 1-byte 0xff NAT keepalives; the marker is stripped here and added back on send.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ike.proto.api import Address, Datagram

log = logging.getLogger("ike.daemon.server")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python does not always export it
NON_ESP_MARKER = b"\x00\x00\x00\x00"
NATT_KEEPALIVE = b"\xff"
MAX_DATAGRAM = 65535
_NO_ANC: list[tuple[int, int, bytes]] = []

IkeReceiver = Callable[[bytes, Address, Address], None]  # (IKE message, local, remote)
EspReceiver = Callable[[bytes, Address, Address], None]  # (ESP packet, local, remote)


@dataclass
class Stats:
    ike_in: int = 0
    ike_out: int = 0
    esp_in: int = 0
    keepalives: int = 0
    dropped: int = 0
    send_errors: int = 0


def classify_natt(data: bytes) -> str:
    """'ike', 'esp', 'keepalive' or 'runt' for a datagram received on the NAT-T port."""
    if data == NATT_KEEPALIVE:
        return "keepalive"
    if data[:4] == NON_ESP_MARKER:
        return "ike" if len(data) > 4 else "runt"
    # ESP needs at least SPI + sequence number; SPI 0 is reserved (and is the marker).
    return "esp" if len(data) >= 8 else "runt"


class UdpEndpoint:
    """One bound UDP socket read with recvmsg so that wildcard binds still learn the local address."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        addr: str,
        port: int,
        on_datagram: Callable[[bytes, Address, Address], None],
    ) -> None:
        ip = ipaddress.ip_address(addr)
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.addr = str(ip)
        self.wildcard = ip.is_unspecified
        self.loop = loop
        self.on_datagram = on_datagram
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Only a wildcard socket needs each datagram's local address: a bound one knows it.
            if self.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.wildcard:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            elif self.wildcard:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.setblocking(False)
            s.bind((self.addr, port))
        except OSError:
            s.close()
            raise
        self.sock = s
        self.port = s.getsockname()[1]
        self._pktinfo: dict[str, list[tuple[int, int, bytes]]] = {}
        loop.add_reader(s.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        # Drain what is queued, but bound the batch so one busy socket cannot starve the loop.
        ancsize = 256 if self.wildcard else 0
        for _ in range(64):
            try:
                data, anc, _flags, src = self.sock.recvmsg(MAX_DATAGRAM, ancsize)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("recvmsg on %s:%d: %s", self.addr, self.port, e)
                return
            local_ip = self.addr
            for level, typ, cdata in anc:
                if level == socket.IPPROTO_IP and typ == IP_PKTINFO and len(cdata) >= 12:
                    local_ip = socket.inet_ntop(socket.AF_INET, cdata[8:12])
                elif level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO and len(cdata) >= 16:
                    local_ip = socket.inet_ntop(socket.AF_INET6, cdata[:16])
            try:
                self.on_datagram(data, (local_ip, self.port), (src[0], src[1]))
            except Exception:
                log.exception("handling a datagram from %s failed", src[0])

    def send(self, data: bytes, local_ip: str, remote: Address) -> None:
        dest: tuple[str, int] | tuple[str, int, int, int]
        dest = (remote[0], remote[1]) if self.family == socket.AF_INET else (remote[0], remote[1], 0, 0)
        anc = self._pktinfo.get(local_ip) if self.wildcard else _NO_ANC
        if anc is None:
            anc = self._pktinfo_for(local_ip)
        self.sock.sendmsg([data], anc, 0, dest)

    def _pktinfo_for(self, local_ip: str) -> list[tuple[int, int, bytes]]:
        """The source-address ancillary data for sends from `local_ip`, built once per address
        (every IKE datagram a wildcard socket sends needs it)."""
        anc: list[tuple[int, int, bytes]] = []
        if local_ip and not ipaddress.ip_address(local_ip).is_unspecified:
            packed = socket.inet_pton(self.family, local_ip)
            if self.family == socket.AF_INET:
                anc = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, packed, b"\0" * 4))]
            else:
                anc = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + struct.pack("=i", 0))]
        if len(self._pktinfo) >= 256:  # our own addresses: few, but do not grow without bound
            self._pktinfo.clear()
        self._pktinfo[local_ip] = anc
        return anc


class UdpServer:
    """All of iked's UDP endpoints; routes IKE to `on_ike` and UDP-encapsulated ESP to `on_esp`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: list[str],
        ike_port: int = 500,
        natt_port: int = 4500,
        on_ike: IkeReceiver | None = None,
        on_esp: EspReceiver | None = None,
    ) -> None:
        self.loop = loop
        self.listen = listen
        self.ike_port = ike_port
        self.natt_port = natt_port
        self.on_ike = on_ike
        self.on_esp = on_esp
        self.stats = Stats()
        self._specific: dict[tuple[str, int], UdpEndpoint] = {}
        self._wildcard: dict[tuple[int, int], UdpEndpoint] = {}
        # local address -> socket, resolved once per address: every IKE datagram sent asks.
        self._by_local: dict[Address, UdpEndpoint] = {}

    def start(self) -> None:
        self._by_local.clear()
        try:
            for addr in self.listen:
                for port, cb in ((self.ike_port, self._from_ike_port), (self.natt_port, self._from_natt_port)):
                    ep = UdpEndpoint(self.loop, addr, port, cb)
                    if ep.wildcard:
                        self._wildcard[(ep.family, port)] = ep
                    else:
                        self._specific[(ep.addr, port)] = ep
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for ep in [*self._specific.values(), *self._wildcard.values()]:
            ep.close()
        self._specific.clear()
        self._wildcard.clear()
        self._by_local.clear()

    def _from_ike_port(self, data: bytes, local: Address, remote: Address) -> None:
        self.stats.ike_in += 1
        if self.on_ike is not None:
            self.on_ike(data, local, remote)

    def _from_natt_port(self, data: bytes, local: Address, remote: Address) -> None:
        kind = classify_natt(data)
        if kind == "ike":
            self.stats.ike_in += 1
            if self.on_ike is not None:
                self.on_ike(data[4:], local, remote)
        elif kind == "esp":
            self.stats.esp_in += 1
            if self.on_esp is not None:
                self.on_esp(data, local, remote)
            else:
                self.stats.dropped += 1
        elif kind == "keepalive":
            self.stats.keepalives += 1
        else:
            self.stats.dropped += 1
            log.debug("dropped a %d-byte runt on the NAT-T port from %s", len(data), remote[0])

    def is_natt_port(self, port: int) -> bool:
        return port in (self.natt_port, 4500)

    def _endpoint(self, local: Address) -> UdpEndpoint | None:
        ep = self._by_local.get(local)
        if ep is None:
            ep = self._find_endpoint(local)
            if ep is not None:
                if len(self._by_local) >= 256:  # local addresses are ours: few
                    self._by_local.clear()
                self._by_local[local] = ep
        return ep

    def _find_endpoint(self, local: Address) -> UdpEndpoint | None:
        port = self.natt_port if self.is_natt_port(local[1]) else self.ike_port
        ep = self._specific.get((_canon(local[0]), port))
        if ep is not None:
            return ep
        fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        ep = self._wildcard.get((fam, port))
        if ep is None and len(self._specific) == 2 * len(self.listen) and self._specific:
            # Bound to specific addresses only and asked for another one: use one of our family.
            for (_addr, p), cand in self._specific.items():
                if p == port and cand.family == fam:
                    return cand
        return ep

    def send_ike(self, dg: Datagram) -> None:
        ep = self._endpoint(dg.local)
        if ep is None:
            self.stats.send_errors += 1
            log.error(
                "no socket for local address %s port %d; not sending to %s", dg.local[0], dg.local[1], dg.remote[0]
            )
            return
        data = NON_ESP_MARKER + dg.data if ep.port == self.natt_port else dg.data
        self._send(ep, data, dg.local[0], dg.remote)
        self.stats.ike_out += 1

    def send_esp(self, data: bytes, local: Address, remote: Address) -> None:
        """UDP-encapsulated ESP (or a NAT keepalive) from the NAT-T port."""
        ep = self._endpoint((local[0], self.natt_port))
        if ep is None:
            self.stats.send_errors += 1
            return
        self._send(ep, data, local[0], remote)

    def _send(self, ep: UdpEndpoint, data: bytes, local_ip: str, remote: Address) -> None:
        try:
            ep.send(data, local_ip, remote)
        except OSError as e:
            # A vanished peer or route must not stop the daemon; the engine's retransmission and
            # DPD decide when the peer is gone.
            self.stats.send_errors += 1
            log.debug("send to %s:%d failed: %s", remote[0], remote[1], e)

    def hand_natt_to(
        self,
        attach: Callable[[socket.socket, IkeReceiver], None],
        decap: Callable[[socket.socket], None] | None = None,
    ) -> int:
        """Let the data plane read the NAT-T sockets itself (it batches ESP-in-UDP and passes
        everything else back here, marker included). Only for sockets bound to one address, one
        per family: the data plane neither learns a wildcard socket's local address per datagram
        nor keeps more than one socket per family. Returns how many were handed over.

        Sockets iked keeps reading still get `decap` (default: the data plane's `decap_udp_socket`,
        which planes with kernel ESP-in-UDP offer): the kernel then takes ESP off them and leaves
        IKE, marker included, to us. Without it a kernel SA would never see that ESP."""
        if decap is None:
            decap = getattr(getattr(attach, "__self__", None), "decap_udp_socket", None)
        natt = [ep for (_a, port), ep in self._specific.items() if port == self.natt_port]
        kept = [ep for (_f, port), ep in self._wildcard.items() if port == self.natt_port]
        handed = 0
        if self._wildcard or len({ep.family for ep in natt}) != len(natt):
            kept += natt
        else:
            for ep in natt:
                self.loop.remove_reader(ep.sock.fileno())
                try:
                    attach(ep.sock, self._from_natt_port)
                except Exception as e:
                    log.debug("data plane does not read %s:%d itself (%s); iked does", ep.addr, ep.port, e)
                    self.loop.add_reader(ep.sock.fileno(), ep._readable)
                    kept.append(ep)
                    continue
                handed += 1
        if decap is not None:
            for ep in kept:
                try:
                    decap(ep.sock)
                except Exception as e:
                    log.error("ESP-in-UDP to %s:%d will not reach the kernel's SAs: %s", ep.addr, ep.port, e)
                else:
                    log.debug("the kernel takes ESP-in-UDP on %s:%d; iked reads the IKE there", ep.addr, ep.port)
        return handed

    def sockets(self) -> list[socket.socket]:
        return [ep.sock for ep in [*self._specific.values(), *self._wildcard.values()]]

    def local_addresses(self) -> list[Address]:
        return [(ep.addr, ep.port) for ep in [*self._specific.values(), *self._wildcard.values()]]


def _canon(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr
