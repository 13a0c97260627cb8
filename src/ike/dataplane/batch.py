"""Many datagrams in one system call: sendmmsg(2) through ctypes (Python's socket module has no
wrapper), for the ESP that one TUN read batch produces.

The userspace data plane queues every ESP packet of a batch on the sender of its socket (the raw
ESP socket of the family, or the attached port-4500 socket) and flushes them all at the end: one
`sendmmsg` per socket instead of one `sendto` per packet. A message is one datagram, or on a UDP
socket one UDP GSO message (several segments of one size to one peer, each sent as its own datagram by
the kernel). Destinations are packed into a sockaddr once, per peer (`Destination`); the message
and iovec arrays are allocated once per sender and refilled per flush.

Where libc has no sendmmsg (or the kernel answers ENOSYS) the same queue is sent with one `sendto`
or `sendmsg` per message. Failures are per message: a full socket buffer drops the rest of the
batch, as a router's full queue would, and other errors drop that message only. A UDP GSO message the
kernel refuses goes out again as separate datagrams, and `gso_refused` tells the caller to stop
building them.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast

log = logging.getLogger("ike.dataplane.batch")

SOL_UDP = 17
UDP_SEGMENT = 103
MAX_MSGS = 256  # messages per flush; a fuller queue is flushed early
MAX_GSO_IOVS = 1024  # segments of the UDP GSO messages of one flush

_TRANSIENT = frozenset((errno.EAGAIN, errno.ENOBUFS))
# what a kernel without usable UDP GSO on this path answers to a GSO message
_GSO_REFUSED = frozenset((errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT))


class _Iovec(ctypes.Structure):
    # a bytes object assigned to iov_base is kept alive by the array until the slot is reused
    _fields_ = (("iov_base", ctypes.c_char_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


# struct cmsghdr (len: size_t, level, type: int) followed by the u16 segment size, padded
_CMSG = struct.Struct("@Nii")
_CMSG_LEN = _CMSG.size + 2
_CMSG_SPACE = (_CMSG_LEN + ctypes.sizeof(ctypes.c_size_t) - 1) & ~(ctypes.sizeof(ctypes.c_size_t) - 1)
_SEG = struct.Struct("@H")
_IOV_SIZE = ctypes.sizeof(_Iovec)
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)


def _load_sendmmsg() -> Callable[[int, int, int, int], int] | None:
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    fn.restype = ctypes.c_int
    f: Callable[[int, int, int, int], int] = fn
    return f


_SENDMMSG = _load_sendmmsg() if sys.platform.startswith("linux") else None


class Destination:
    """One peer address as a sockaddr (for sendmmsg) and as Python's tuple (for the fallback)."""

    __slots__ = ("addr", "buf", "len", "ptr")

    def __init__(self, family: int, host: str, port: int) -> None:
        ip, _, scope = host.partition("%")
        packed = ipaddress.ip_address(ip).packed
        if family == socket.AF_INET:
            raw = struct.pack("=H", family) + port.to_bytes(2, "big") + packed + bytes(8)
            self.addr: tuple[Any, ...] = (ip, port)
        else:
            scope_id = socket.if_nametoindex(scope) if scope and not scope.isdigit() else int(scope or 0)
            raw = struct.pack("=H", family) + port.to_bytes(2, "big") + bytes(4) + packed + struct.pack("=I", scope_id)
            self.addr = (host, port, 0, scope_id)
        self.buf = ctypes.create_string_buffer(raw, len(raw))
        self.ptr = ctypes.addressof(self.buf)
        self.len = len(raw)


class BatchSender:
    """Datagrams queued for one socket, sent together by `flush` (see the module doc)."""

    def __init__(self, sock: socket.socket, use_sendmmsg: bool = True) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._sendmmsg = _SENDMMSG if use_sendmmsg else None
        # (datagram, or the segments of one UDP GSO message; destination; GSO segment size or 0)
        self._queue: list[tuple[bytes | list[bytes], Destination, int]] = []
        self._gso_iovs = 0  # iovecs queued UDP GSO messages take
        self.dropped = 0  # datagrams not sent, over the sender's life
        self._reported = 0  # of those, how many a flush has returned
        self.calls = 0  # system calls made by flushes (sendmmsg, or sendto/sendmsg in the fallback)
        self.gso_refused: int = 0  # errno of the first UDP GSO message the kernel refused, else 0
        if self._sendmmsg is not None:
            # Message m is one datagram in iovec m unless it is a GSO message, whose segments take
            # iovecs from MAX_MSGS on; the per-packet work is then two or three field stores.
            self._msgs = (_Mmsghdr * MAX_MSGS)()
            self._iov = (_Iovec * (MAX_MSGS + MAX_GSO_IOVS))()
            self._ctl = ctypes.create_string_buffer(_CMSG_SPACE * MAX_MSGS)
            self._hdrs = [m.msg_hdr for m in self._msgs]
            self._iov_views = list(self._iov)
            self._names: list[Destination | None] = [None] * MAX_MSGS
            self._msgs_at = ctypes.addressof(self._msgs)
            self._iov_at = ctypes.addressof(self._iov)
            self._ctl_at = ctypes.addressof(self._ctl)
            self._plain_slots(range(MAX_MSGS))

    def _plain_slots(self, slots: Iterable[int]) -> None:
        for m in slots:
            h = self._hdrs[m]
            h.msg_iov = self._iov_at + m * _IOV_SIZE
            h.msg_iovlen = 1
            h.msg_control = None
            h.msg_controllen = 0

    @property
    def batched(self) -> bool:
        """True when flushes use sendmmsg."""
        return self._sendmmsg is not None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, data: bytes, dest: Destination) -> None:
        """Queue one datagram."""
        q = self._queue
        q.append((data, dest, 0))
        if len(q) >= MAX_MSGS:
            self.flush()

    def add_gso(self, segments: list[bytes], size: int, dest: Destination) -> None:
        """Queue one UDP GSO message: `segments` all of `size` bytes but the last, which may be shorter."""
        if len(segments) == 1:
            self.add(segments[0], dest)
            return
        if self._gso_iovs + len(segments) > MAX_GSO_IOVS:
            self.flush()
        self._queue.append((segments, dest, size))
        self._gso_iovs += len(segments)
        if len(self._queue) >= MAX_MSGS:
            self.flush()

    def flush(self) -> int:
        """Send everything queued; returns the number of datagrams that could not be sent since the
        last flush returned (those of early flushes by a full queue included)."""
        queue = self._queue
        if queue:
            self._queue = []
            self._gso_iovs = 0
            if self._sendmmsg is None:
                self._send_each(queue, 0)
            else:
                self._send_many(queue)
        n, self._reported = self.dropped - self._reported, self.dropped
        return n

    def _send_many(self, queue: list[tuple[bytes | list[bytes], Destination, int]]) -> None:
        assert self._sendmmsg is not None
        hdrs, iovs, names = self._hdrs, self._iov_views, self._names
        gso: list[int] = []  # slots holding GSO messages, made plain again afterwards
        j = MAX_MSGS
        for m, (data, dest, seg) in enumerate(queue):
            if names[m] is not dest:
                h = hdrs[m]
                h.msg_name = dest.ptr
                h.msg_namelen = dest.len
                names[m] = dest
            if not seg:
                v = iovs[m]
                v.iov_base = data
                v.iov_len = len(data)
                continue
            h = hdrs[m]
            h.msg_iov = self._iov_at + j * _IOV_SIZE
            h.msg_iovlen = len(data)
            for part in cast(list[bytes], data):
                v = iovs[j]
                v.iov_base = part
                v.iov_len = len(part)
                j += 1
            at = m * _CMSG_SPACE
            _CMSG.pack_into(self._ctl, at, _CMSG_LEN, SOL_UDP, UDP_SEGMENT)
            _SEG.pack_into(self._ctl, at + _CMSG.size, seg)
            h.msg_control = self._ctl_at + at
            h.msg_controllen = _CMSG_SPACE
            gso.append(m)
        try:
            self._send_slots(queue)
        finally:
            if gso:
                self._plain_slots(gso)

    def _send_slots(self, queue: list[tuple[bytes | list[bytes], Destination, int]]) -> None:
        assert self._sendmmsg is not None
        n, i = len(queue), 0
        while i < n:
            self.calls += 1
            r = self._sendmmsg(self._fd, self._msgs_at + i * _MMSG_SIZE, n - i, 0)
            if r > 0:
                i += r  # the kernel stops at the first message it refuses: retry from there
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.ENOSYS:
                log.info("sendmmsg is not available (%s): sending datagrams one by one", errno.errorcode[err])
                self._sendmmsg = None
                self._send_each(queue, i)
                return
            if err in _TRANSIENT:  # socket buffer full: the rest of this batch is dropped
                self.dropped += sum(_count(q) for q in queue[i:])
                return
            self._refused(queue[i], err)
            i += 1

    def _refused(self, item: tuple[bytes | list[bytes], Destination, int], err: int) -> None:
        data, dest, seg = item
        if not seg:
            self.dropped += 1
            return
        if err in _GSO_REFUSED and not self.gso_refused:
            self.gso_refused = err
        assert isinstance(data, list)
        self._send_each([(d, dest, 0) for d in data], 0)

    def _send_each(self, queue: list[tuple[bytes | list[bytes], Destination, int]], start: int) -> None:
        sock = self.sock
        for k in range(start, len(queue)):
            data, dest, seg = queue[k]
            self.calls += 1
            try:
                if seg:
                    assert isinstance(data, list)
                    sock.sendmsg(data, [(SOL_UDP, UDP_SEGMENT, _SEG.pack(seg))], 0, dest.addr)
                else:
                    assert isinstance(data, bytes)
                    sock.sendto(data, dest.addr)
            except BlockingIOError:
                self.dropped += sum(_count(q) for q in queue[k:])
                return
            except OSError as e:
                self._refused(queue[k], e.errno or 0)


def _count(item: tuple[bytes | list[bytes], Destination, int]) -> int:
    return len(item[0]) if item[2] else 1
