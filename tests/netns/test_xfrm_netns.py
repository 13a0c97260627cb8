"""The XFRM backend against the real kernel and against iproute2.

- Our NEWSA/NEWPOLICY messages equal the ones `ip xfrm` sends for the same SA/policy (captured with
  strace inside a throw-away network namespace; the kernel here may refuse ESP SAs, the message is
  compared all the same).
- Policies installed through our netlink code appear in `ip xfrm policy` and go away on remove.
- The ESP probe and `create_backend("auto")` fall back to userspace where the kernel lacks ESP.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

import ike
from harness import require, require_root, require_tools
from harness.netns import two_hosts
from ike.dataplane.netlink import parse_attrs
from ike.dataplane.xfrm import (
    XFRM_POLICY_OUT,
    PolicySpec,
    SaSpec,
    newpolicy_msg,
    newsa_msg,
    policy_selectors,
)
from ike.policy import TrafficSelector as TS

_ENV = {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(ike.__file__)))}


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "strace", "unshare")


def iproute2_message(args: list[str]) -> bytes:
    """The netlink message `ip xfrm <args>` sends, from strace's hex dump, in a private namespace."""
    proc = subprocess.run(
        ["unshare", "-n", "strace", "-e", "trace=sendmsg", "-e", "write=3,4,5", "ip", "xfrm", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    data = bytearray()
    for line in proc.stderr.splitlines():
        if line.startswith(" | ") and re.match(r" \| [0-9a-f]{5}  ", line):
            data += bytes.fromhex("".join(line[10:59].split()))
    require(len(data) >= 16, f"could not capture ip's netlink message: {proc.stderr[-500:]}")
    return bytes(data[: int.from_bytes(data[:4], "little")])


def body_fields(msg: bytes, fixed: int) -> tuple[int, bytes, dict[int, bytes]]:
    kind = int.from_bytes(msg[4:6], "little")
    return kind, msg[16 : 16 + fixed], parse_attrs(msg[16 + fixed :])


def same(ours: bytes, theirs: bytes, fixed: int) -> None:
    k1, f1, a1 = body_fields(ours, fixed)
    k2, f2, a2 = body_fields(theirs, fixed)
    diff = [i for i in range(fixed) if f1[i] != f2[i]]
    assert k1 == k2
    assert not diff, f"fixed part differs at offsets {diff}: ours {f1.hex()} theirs {f2.hex()}"
    assert a1 == a2


def test_gcm_udp_sa_equals_iproute2() -> None:
    key = bytes(range(1, 21))
    theirs = iproute2_message(
        [
            "state",
            "add",
            "src",
            "198.18.0.1",
            "dst",
            "198.18.0.2",
            "proto",
            "esp",
            "spi",
            "0x1000",
            "reqid",
            "7",
            "mode",
            "tunnel",
            "replay-window",
            "32",
            "flag",
            "af-unspec",
            "aead",
            "rfc4106(gcm(aes))",
            "0x" + key.hex(),
            "128",
            "encap",
            "espinudp",
            "4500",
            "4501",
            "0.0.0.0",
        ]
    )
    sa = SaSpec(
        "198.18.0.1",
        "198.18.0.2",
        b"\0\0\x10\0",
        "aes-gcm-16",
        128,
        key,
        None,
        b"",
        reqid=7,
        replay_window=32,
        encap=(4500, 4501),
    )
    same(newsa_msg(sa), theirs, 224)


def test_cbc_esn_v6_sa_equals_iproute2() -> None:
    ek, ik = bytes(range(32)), bytes(range(100, 132))
    theirs = iproute2_message(
        [
            "state",
            "add",
            "src",
            "2001:db8::1",
            "dst",
            "2001:db8::2",
            "proto",
            "esp",
            "spi",
            "0xaabbccdd",
            "reqid",
            "9",
            "mode",
            "tunnel",
            "replay-window",
            "128",
            "flag",
            "af-unspec",
            "flag",
            "esn",
            "enc",
            "cbc(aes)",
            "0x" + ek.hex(),
            "auth-trunc",
            "hmac(sha256)",
            "0x" + ik.hex(),
            "128",
        ]
    )
    sa = SaSpec(
        "2001:db8::1",
        "2001:db8::2",
        bytes.fromhex("aabbccdd"),
        "aes-cbc",
        256,
        ek,
        "hmac-sha2-256-128",
        ik,
        reqid=9,
        esn=True,
        replay_window=128,
    )
    same(newsa_msg(sa), theirs, 224)


def test_policy_equals_iproute2() -> None:
    theirs = iproute2_message(
        [
            "policy",
            "add",
            "src",
            "198.19.1.0/24",
            "dst",
            "198.19.2.0/24",
            "proto",
            "tcp",
            "dport",
            "80",
            "dir",
            "out",
            "priority",
            "1000",
            "tmpl",
            "src",
            "198.18.0.1",
            "dst",
            "198.18.0.2",
            "proto",
            "esp",
            "reqid",
            "7",
            "mode",
            "tunnel",
        ]
    )
    ((out_sel, _),) = policy_selectors(TS.subnet("198.19.1.0/24"), TS.subnet("198.19.2.0/24", protocol=6, port=80))
    ours = newpolicy_msg(PolicySpec(XFRM_POLICY_OUT, out_sel, "198.18.0.1", "198.18.0.2", 7, 1000))
    same(ours, theirs, 168)


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    from ike.dataplane.base import create_backend
    from ike.dataplane.xfrm import XfrmDataPlane, probe_esp
    from ike.dataplane.manual import build_child, parser
    logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
    a = parser().parse_args(sys.argv[1:])
    child = build_child(a)
    async def main():
        dp = XfrmDataPlane()
        await dp.start()
        dp.install_policies(child)
        print("installed", flush=True)
        sys.stdin.readline()
        dp.remove(child.child_id)
        await dp.close()
        print("probe", json.dumps(probe_esp()), flush=True)
        auto = create_backend("auto", tun_name="iketst0")
        print("auto", auto.name, flush=True)
    asyncio.run(main())
    """
)


def test_policies_installed_in_kernel_and_removed() -> None:
    with two_hosts() as (a, _b):
        args = [
            "--local",
            "198.18.0.1",
            "--remote",
            "198.18.0.2",
            "--local-ts",
            "198.19.1.0/24",
            "--remote-ts",
            "198.19.2.0/24",
            "--local-ts",
            "2001:db8:1::/64",
            "--remote-ts",
            "2001:db8:2::/64",
            "--spi-in",
            "1001",
            "--spi-out",
            "1002",
            "--key-in",
            "00" * 20,
            "--key-out",
            "00" * 20,
        ]
        p = a.popen(
            [sys.executable, "-c", SCRIPT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_ENV,
        )
        assert p.stdin and p.stdout
        first = p.stdout.readline()
        if first.strip() != "installed":
            p.kill()
            raise AssertionError(first + "".join(p.communicate(timeout=10)))
        shown = a.run(["ip", "xfrm", "policy", "show"]).stdout
        assert shown.count("\tdir ") == 6, shown  # (v4, v6) x (out, in, fwd)
        assert re.search(r"src 198\.19\.1\.0/24 dst 198\.19\.2\.0/24\s*\n\s*dir out", shown), shown
        assert re.search(r"src 198\.19\.2\.0/24 dst 198\.19\.1\.0/24\s*\n\s*dir fwd", shown), shown
        assert re.search(r"tmpl src 198\.18\.0\.1 dst 198\.18\.0\.2\s*\n\s*proto esp reqid \d+ mode tunnel", shown)
        assert re.search(r"src 2001:db8:1::/64 dst 2001:db8:2::/64\s*\n\s*dir out", shown), shown
        out, err = p.communicate("\n", timeout=30)
        assert p.returncode == 0, out + err
        rest = out + err
        assert a.run(["ip", "xfrm", "policy", "show"]).stdout.strip() == ""
        ok = probe_esp_expected()
        if not ok:
            assert 'probe [false, "adding a test ESP SA:' in rest, rest
            assert "auto userspace" in rest and "using userspace ESP over TUN" in rest, rest
        else:
            assert "auto xfrm" in rest, rest
        assert a.run(["ip", "xfrm", "state", "show"]).stdout.strip() == ""


def probe_esp_expected() -> bool:
    """Whether this kernel can hold ESP SAs, asked in a private namespace."""
    code = "import json; from ike.dataplane.xfrm import probe_esp; print(json.dumps(probe_esp()[0]))"
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
        timeout=30,
        check=True,
    ).stdout
    return out.strip() == "true"


BYPASS = textwrap.dedent(
    """
    import socket, sys
    from ike.dataplane.xfrm import XfrmDataPlane
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    for bypass in (False, True):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if bypass:
            XfrmDataPlane().bypass_socket(s)
        try:
            s.sendto(b"ike", (sys.argv[1], 500))
            print(bypass, "sent", flush=True)
        except OSError as e:
            print(bypass, "refused", e.errno, flush=True)
        s.close()
    """
)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_bypass_socket_passes_a_policy_that_blocks_everything_else(v6: bool) -> None:
    # A host-to-host tunnel's policies cover the peer's own address: IKE must get past them. A block
    # policy stands in for them (no ESP SA is needed to see it work on this kernel).
    with two_hosts(v6=v6) as (a, b):
        peer = b.outer6 if v6 else b.outer4
        assert peer is not None
        plen = 128 if v6 else 32
        any_ = "::/0" if v6 else "0.0.0.0/0"
        a.run(["ip", "xfrm", "policy", "add", "dir", "out", "src", any_, "dst", f"{peer}/{plen}", "action", "block"])
        out = a.run([sys.executable, "-c", BYPASS, peer], env=_ENV).stdout.split("\n")
        assert out[0] == "False refused 1", out  # EPERM: the policy applies to ordinary sockets
        assert out[1] == "True sent", out
