"""The batch sender over real UDP sockets on the loopback: everything queued arrives, in order, to
the right peer, with one sendmmsg per flush; UDP GSO messages arrive as their separate datagrams; the
per-message fallback sends the same; refused messages are counted and do not stop the others."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator

import pytest

from ike.dataplane import batch
from ike.dataplane.batch import BatchSender, Destination


@pytest.fixture
def peers() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    rx = []
    for _ in range(2):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.bind(("127.0.0.1", 0))
        r.settimeout(0)
        rx.append(r)
    yield tx, rx
    for s in [tx, *rx]:
        s.close()


def _drain(r: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(r.recv(65536))
        except BlockingIOError:
            return out


def _dest(r: socket.socket) -> Destination:
    host, port = r.getsockname()
    return Destination(socket.AF_INET, host, port)


@pytest.mark.parametrize("mmsg", [True, False], ids=["sendmmsg", "fallback"])
def test_datagrams_to_two_peers_arrive_in_order(peers: tuple[socket.socket, list[socket.socket]], mmsg: bool) -> None:
    tx, (r1, r2) = peers
    q = BatchSender(tx, use_sendmmsg=mmsg)
    assert q.batched is (mmsg and batch._SENDMMSG is not None)
    d1, d2 = _dest(r1), _dest(r2)
    sent1, sent2 = [], []
    for i in range(100):
        data = i.to_bytes(2, "big") + os.urandom(i % 7 * 100 + 1)
        if i % 3:
            q.add(data, d1)
            sent1.append(data)
        else:
            q.add(data, d2)
            sent2.append(data)
    assert len(q) == 100 and q.calls == 0  # nothing leaves before the flush
    assert q.flush() == 0
    assert len(q) == 0
    assert _drain(r1) == sent1 and _drain(r2) == sent2
    assert q.calls == (1 if q.batched else 100)


def test_a_full_queue_flushes_early(peers: tuple[socket.socket, list[socket.socket]]) -> None:
    tx, (r1, _r2) = peers
    q = BatchSender(tx)
    d = _dest(r1)
    for i in range(batch.MAX_MSGS + 5):
        q.add(i.to_bytes(2, "big"), d)
    assert len(q) == 5
    q.flush()
    assert [int.from_bytes(b, "big") for b in _drain(r1)] == list(range(batch.MAX_MSGS + 5))
    if q.batched:
        assert q.calls == 2


@pytest.mark.parametrize("mmsg", [True, False], ids=["sendmmsg", "fallback"])
def test_udp_gso_message_arrives_as_separate_datagrams(
    peers: tuple[socket.socket, list[socket.socket]], mmsg: bool
) -> None:
    tx, (r1, r2) = peers
    q = BatchSender(tx, use_sendmmsg=mmsg)
    segs = [os.urandom(1200) for _ in range(5)] + [os.urandom(300)]  # the last one short
    more = [os.urandom(1200) for _ in range(3)]
    q.add(b"first", _dest(r1))
    q.add_gso(segs, 1200, _dest(r1))
    q.add_gso(more, 1200, _dest(r2))
    q.add_gso([b"alone"], 5, _dest(r2))  # one segment: an ordinary datagram
    assert q.flush() == 0
    assert _drain(r1) == [b"first", *segs]
    assert _drain(r2) == [*more, b"alone"]
    assert q.gso_refused == 0
    if q.batched:
        assert q.calls == 1


def test_a_slot_that_held_a_gso_message_carries_a_plain_datagram_next(
    peers: tuple[socket.socket, list[socket.socket]],
) -> None:
    tx, (r1, r2) = peers
    q = BatchSender(tx)
    segs = [os.urandom(500) for _ in range(4)]
    q.add(b"zero", _dest(r1))
    q.add_gso(segs, 500, _dest(r1))
    q.flush()
    q.add(b"one", _dest(r2))
    q.add(b"two", _dest(r2))  # message 1 again: one datagram, to the other peer, no GSO segment size
    q.flush()
    assert _drain(r1) == [b"zero", *segs]
    assert _drain(r2) == [b"one", b"two"]


def test_a_gso_message_the_kernel_refuses_goes_out_datagram_by_datagram(
    peers: tuple[socket.socket, list[socket.socket]],
) -> None:
    # more segments than the kernel's UDP_MAX_SEGMENTS (64, or 128 on newer kernels): EINVAL
    tx, (r1, _r2) = peers
    q = BatchSender(tx)
    segs = [i.to_bytes(2, "big") * 50 for i in range(150)]
    q.add_gso(segs, 100, _dest(r1))
    assert q.flush() == 0
    assert _drain(r1) == segs
    assert q.gso_refused == errno.EINVAL


@pytest.mark.parametrize("mmsg", [True, False], ids=["sendmmsg", "fallback"])
def test_refused_messages_are_counted_and_the_rest_still_go(
    peers: tuple[socket.socket, list[socket.socket]], mmsg: bool
) -> None:
    tx, (r1, _r2) = peers
    q = BatchSender(tx, use_sendmmsg=mmsg)
    good = _dest(r1)
    bad = Destination(socket.AF_INET, "127.0.0.1", 0)  # port 0: EINVAL
    q.add(b"a", good)
    q.add(b"b", bad)
    q.add(b"c", good)
    q.add(bytes(70000), good)  # larger than a UDP datagram can be: EMSGSIZE
    q.add(b"d", good)
    assert q.flush() == 2
    assert _drain(r1) == [b"a", b"c", b"d"]
    assert q.dropped == 2 and q.flush() == 0  # reported once


def test_destinations_pack_sockaddrs() -> None:
    d4 = Destination(socket.AF_INET, "198.18.0.2", 4500)
    assert d4.buf.raw == socket.AF_INET.to_bytes(2, sys.byteorder) + bytes.fromhex("1194 c6120002") + bytes(8)
    assert d4.addr == ("198.18.0.2", 4500) and d4.len == 16
    d6 = Destination(socket.AF_INET6, "2001:db8::2", 0)
    # family, port 0, flow info 0, the address, scope id 0
    raw = socket.AF_INET6.to_bytes(2, sys.byteorder) + bytes(6) + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert d6.buf.raw == raw + bytes(4) and d6.len == 28
    assert d6.addr == ("2001:db8::2", 0, 0, 0)
