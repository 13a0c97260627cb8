"""`create_backend` names and the `none` backend."""

from __future__ import annotations

import asyncio

import pytest

from ike.dataplane.base import DataPlaneError, create_backend
from ike.dataplane.manual import build_child, parser
from ike.dataplane.none import NoneDataPlane
from ike.dataplane.userspace import UserspaceDataPlane


def child(cid: int = 1):  # type: ignore[no-untyped-def]
    a = parser().parse_args(
        [
            "--local",
            "198.18.0.1",
            "--remote",
            "198.18.0.2",
            "--local-ts",
            "198.19.1.0/24",
            "--remote-ts",
            "198.19.2.0/24",
            "--spi-in",
            "1001",
            "--spi-out",
            "1002",
            "--key-in",
            "00" * 20,
            "--key-out",
            "00" * 20,
            "--child-id",
            str(cid),
        ]
    )
    return build_child(a)


def test_none_backend_accepts_and_counts_nothing() -> None:
    dp = create_backend("none")
    assert isinstance(dp, NoneDataPlane) and dp.name == "none"

    async def run() -> None:
        await dp.start()
        dp.install(child(1))
        with pytest.raises(DataPlaneError, match="already installed"):
            dp.install(child(1))
        c = dp.counters(1)
        assert (c.bytes_in, c.bytes_out, c.packets_in, c.packets_out) == (0, 0, 0, 0)
        dp.receive_udp_esp(b"\x00\x00\x10\x01" + bytes(40), ("198.18.0.1", 4500), ("198.18.0.2", 4500))
        dp.remove(1)
        dp.remove(1)  # idempotent
        with pytest.raises(DataPlaneError, match="no child SA 1"):
            dp.counters(1)
        await dp.close()

    asyncio.run(run())


def test_unknown_backend_name_is_named() -> None:
    with pytest.raises(DataPlaneError, match=r"unknown data plane 'kernel'.*userspace"):
        create_backend("kernel")


def test_userspace_backend_is_created_without_side_effects() -> None:
    dp = create_backend("userspace", tun_name="ike7", mtu=1300)
    assert isinstance(dp, UserspaceDataPlane) and dp.tun_name == "ike7" and dp.mtu == 1300
    with pytest.raises(DataPlaneError, match="not started"):
        dp.install(child())
    with pytest.raises(DataPlaneError, match="longer than 15"):
        UserspaceDataPlane(tun_name="x" * 16)
