"""XFRM netlink messages: struct layout, parsed back field by field, and selector/port decomposition."""

from __future__ import annotations

import socket
import struct

import pytest

from ike.dataplane.netlink import NLM_F_ACK, parse_attrs
from ike.dataplane.xfrm import (
    XFRM_MSG_GETSA,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    XFRM_STATE_ESN,
    XFRMA_ALG_AEAD,
    XFRMA_ALG_AUTH_TRUNC,
    XFRMA_ALG_CRYPT,
    XFRMA_ENCAP,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_TMPL,
    PolicySpec,
    SaSpec,
    XfrmDataPlane,
    delpolicy_msg,
    newpolicy_msg,
    newsa_msg,
    policy_selectors,
    port_blocks,
)
from ike.policy import TrafficSelector as TS

A, B = "198.18.0.1", "198.18.0.2"


def split(msg: bytes) -> tuple[int, int, bytes]:
    n, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", msg)
    assert n == len(msg)
    return kind, flags, msg[16:]


def test_gcm_sa_with_udp_encap_parses_back() -> None:
    key = bytes(range(20))
    sa = SaSpec(
        A,
        B,
        b"\x00\x00\x10\x00",
        "aes-gcm-16",
        128,
        key,
        None,
        b"",
        reqid=7,
        encap=(4500, 4501),
        soft_bytes=900,
        hard_bytes=1000,
        soft_s=50,
        hard_s=60,
    )
    kind, flags, body = split(newsa_msg(sa, seq=3))
    assert kind == XFRM_MSG_NEWSA and flags & NLM_F_ACK
    info, attrs = body[:224], parse_attrs(body[224:])
    assert info[56:72] == socket.inet_aton(B) + bytes(12)  # id.daddr
    assert info[72:76] == b"\x00\x00\x10\x00" and info[76] == 50  # spi, proto esp
    assert info[80:84] == socket.inet_aton(A)  # saddr
    assert struct.unpack_from("=8Q", info, 96)[:6] == (900, 1000, 2**64 - 1, 2**64 - 1, 50, 60)
    reqid, family, mode, window, fl = struct.unpack_from("=IHBBB", info, 208)
    assert (reqid, family, mode, window) == (7, socket.AF_INET, 1, 32) and not fl & XFRM_STATE_ESN
    aead = attrs[XFRMA_ALG_AEAD]
    assert aead[:64].rstrip(b"\0") == b"rfc4106(gcm(aes))"
    assert struct.unpack_from("=II", aead, 64) == (160, 128) and aead[72:] == key
    t, sport, dport = struct.unpack_from("=H2s2s", attrs[XFRMA_ENCAP])
    assert (t, int.from_bytes(sport, "big"), int.from_bytes(dport, "big")) == (2, 4500, 4501)


def test_cbc_sa_with_esn_parses_back() -> None:
    sa = SaSpec(
        "2001:db8::1",
        "2001:db8::2",
        b"\xaa\xbb\xcc\xdd",
        "aes-cbc",
        256,
        bytes(32),
        "hmac-sha2-256-128",
        bytes(range(32)),
        reqid=9,
        esn=True,
        replay_window=128,
    )
    _, _, body = split(newsa_msg(sa))
    info, attrs = body[:224], parse_attrs(body[224:])
    assert struct.unpack_from("=H", info, 212)[0] == socket.AF_INET6
    assert info[215] == 0 and info[216] & XFRM_STATE_ESN  # window travels in the ESN attribute
    assert attrs[XFRMA_ALG_CRYPT][:64].rstrip(b"\0") == b"cbc(aes)"
    assert struct.unpack_from("=I", attrs[XFRMA_ALG_CRYPT], 64)[0] == 256
    auth = attrs[XFRMA_ALG_AUTH_TRUNC]
    assert auth[:64].rstrip(b"\0") == b"hmac(sha256)" and struct.unpack_from("=II", auth, 64) == (256, 128)
    bmp_len, *_, window = struct.unpack_from("=6I", attrs[XFRMA_REPLAY_ESN_VAL])
    assert (bmp_len, window) == (4, 128) and len(attrs[XFRMA_REPLAY_ESN_VAL]) == 24


def test_policy_message_parses_back() -> None:
    ((out_sel, in_sel),) = policy_selectors(TS.subnet("198.19.1.0/24"), TS.subnet("198.19.2.0/24"))
    kind, _, body = split(newpolicy_msg(PolicySpec(XFRM_POLICY_OUT, out_sel, A, B, 7, 1000)))
    assert kind == XFRM_MSG_NEWPOLICY
    sel = body[:56]
    assert sel[:4] == socket.inet_aton("198.19.2.0") and sel[16:20] == socket.inet_aton("198.19.1.0")
    assert (sel[42], sel[43]) == (24, 24)
    prio, _idx, direction, action = struct.unpack_from("=IIBB", body, 152)
    assert (prio, direction, action) == (1000, XFRM_POLICY_OUT, 0)
    tmpl = parse_attrs(body[168:])[XFRMA_TMPL]
    assert len(tmpl) == 64 and tmpl[:4] == socket.inet_aton(B) and tmpl[20] == 50
    assert tmpl[28:32] == socket.inet_aton(A) and struct.unpack_from("=I", tmpl, 44)[0] == 7
    assert in_sel[:4] == socket.inet_aton("198.19.1.0")
    _, _, d = split(delpolicy_msg(XFRM_POLICY_IN, in_sel))
    assert d[:56] == in_sel and d[60] == XFRM_POLICY_IN


@pytest.mark.parametrize(
    ("lo", "hi", "blocks"),
    [
        (0, 65535, [(0, 0)]),
        (500, 500, [(500, 0xFFFF)]),
        (1024, 2047, [(1024, 0xFC00)]),
        (5, 8, [(5, 0xFFFF), (6, 0xFFFE), (8, 0xFFFF)]),
    ],
)
def test_port_blocks(lo: int, hi: int, blocks: list[tuple[int, int]]) -> None:
    assert port_blocks(lo, hi) == blocks
    covered = {p for base, mask in blocks for p in range(65536) if p & mask == base} if mask_ok(blocks) else set()
    assert covered == set(range(lo, hi + 1))


def mask_ok(blocks: list[tuple[int, int]]) -> bool:
    return all(base & ~mask & 0xFFFF == 0 for base, mask in blocks)


def test_range_selector_becomes_cidr_blocks_and_three_directions() -> None:
    dp = XfrmDataPlane()
    from ike.dataplane.manual import build_child, parser

    a = parser().parse_args(
        [
            "--local",
            A,
            "--remote",
            B,
            "--local-ts",
            "198.19.1.0/24",
            "--remote-ts",
            "198.19.2.1-198.19.2.6",
            "--spi-in",
            "1001",
            "--spi-out",
            "1002",
            "--key-in",
            "00" * 20,
            "--key-out",
            "00" * 20,
        ]
    )
    specs = dp.policy_specs(build_child(a), reqid=1)
    # 198.19.2.1-6 = .1/32 .2/31 .4/31 .6/32: 4 blocks x (out, in, fwd)
    assert len(specs) == 12
    assert {s.direction for s in specs} == {XFRM_POLICY_OUT, XFRM_POLICY_IN, XFRM_POLICY_FWD}
    outs = sorted((s.sel[42], s.priority) for s in specs if s.direction == XFRM_POLICY_OUT)
    assert [p for p, _ in outs] == [31, 31, 32, 32]
    assert outs[0][1] > outs[-1][1]  # more specific = numerically lower = earlier


@pytest.mark.parametrize(("esn", "space"), [(False, 2**32 - 1), (True, 2**64 - 1)], ids=["32-bit", "esn"])
def test_kernel_sas_get_a_soft_packet_limit_before_sequence_exhaustion(esn: bool, space: int) -> None:
    # The kernel stops sending at sequence exhaustion without any expire message first; a soft
    # packet limit makes it send one (and iked rekey) well before. Bytes and seconds as negotiated.
    from ike.dataplane.manual import build_child, parser

    args = ["--local", A, "--remote", B, "--local-ts", "198.19.1.0/24", "--remote-ts", "198.19.2.0/24"]
    args += ["--spi-in", "1001", "--spi-out", "1002", "--key-in", "00" * 20, "--key-out", "00" * 20]
    args += ["--lifetime-s", "100", "--lifetime-kb", "1000"] + (["--esn"] if esn else [])
    for sa in XfrmDataPlane().sa_specs(build_child(parser().parse_args(args)), reqid=1):
        assert (sa.hard_packets, sa.soft_packets) == (space, space * 9 // 10)
        info = split(newsa_msg(sa))[2][:224]
        soft_b, hard_b, soft_p, hard_p, soft_s, hard_s = struct.unpack_from("=8Q", info, 96)[:6]
        assert (soft_b, hard_b, soft_s, hard_s) == (921600, 1024000, 90, 100)
        assert (soft_p, hard_p) == (space * 9 // 10, space)


class _FakeKernel:
    """Stands in for the netlink socket where the kernel has no ESP (this machine): accepts every
    request and answers XFRM_MSG_GETSA with the SA as installed, its byte counter set."""

    def __init__(self) -> None:
        self.sas: dict[bytes, bytes] = {}  # spi -> xfrm_usersa_info body
        self.used: dict[bytes, int] = {}

    def request(self, msg: bytes, what: str) -> list[tuple[int, bytes]]:
        kind, _flags, body = split(msg)
        if kind == XFRM_MSG_NEWSA:
            self.sas[body[72:76]] = body
            return []
        if kind == XFRM_MSG_GETSA:
            spi = body[16:20]  # xfrm_usersa_id: daddr (16), spi
            info = bytearray(self.sas[spi])
            struct.pack_into("=4Q", info, 160, self.used.get(spi, 0), 1, 0, 0)  # curlft
            return [(XFRM_MSG_NEWSA, bytes(info))]
        return []

    def close(self) -> None:
        return None


@pytest.mark.parametrize(("kb", "used", "left"), [(0, (5000, 0), None), (100, (30_000, 51_300), 49), (1, (2000, 0), 0)])
def test_counters_report_kb_left_of_the_sa_nearer_its_limit(kb: int, used: tuple[int, int], left: int | None) -> None:
    from ike.dataplane.manual import build_child, parser

    args = ["--local", A, "--remote", B, "--local-ts", "198.19.1.0/24", "--remote-ts", "198.19.2.0/24"]
    args += ["--spi-in", "1001", "--spi-out", "1002", "--key-in", "00" * 20, "--key-out", "00" * 20]
    args += ["--lifetime-kb", str(kb)]
    dp = XfrmDataPlane()
    kernel = _FakeKernel()
    dp._xs = kernel  # type: ignore[assignment]
    dp.install(build_child(parser().parse_args(args)))
    kernel.used = {b"\x00\x00\x10\x01": used[0], b"\x00\x00\x10\x02": used[1]}  # in, out
    c = dp.counters(1)
    assert (c.bytes_in, c.bytes_out) == used
    assert c.kb_left == left  # 100 KiB - 51,300 bytes = 49.9 KiB: whole KiB only, never more than is left
