"""iked's request handler: malformed or unknown arguments are refused with a message, and the
manager behind it is left as it was."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_manager import Net, settle

from ike.daemon.control import RequestError
from ike.daemon.main import Daemon, parse_args
from ike.daemon.policies import IndexedPolicies
from ike.policy import Group


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    loop = asyncio.new_event_loop()
    net = Net(loop)
    d = Daemon(parse_args(["--db", str(tmp_path / "x.db"), "--conf", str(tmp_path / "none.conf")]))
    d.manager = net.a
    try:
        yield d, net
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("op", "args", "needle"),
    [
        ("list", {"phase": "3"}, "phase=3 is not valid for list"),
        ("list", {"role": "x"}, "role=x"),
        ("list", {"numlist": ["1"]}, "numlist must be a list of positive tunnel numbers"),
        ("list", {"numlist": [0]}, "numlist must be a list of positive tunnel numbers"),
        ("remove", {"phase": "1+"}, "phase=1+ is not valid here"),
        ("remove", {"phase": "1", "numlist": [42]}, "no active phase 1 tunnel numbered 42"),
        ("activate", {}, "say which tunnels to activate"),
        ("activate", {"numlist": [77]}, "no phase 2 tunnel number 77 in the database"),
        ("activate", {"namelist": "gw", "phase": "1"}, "namelist must be a list of names"),
        ("activate", {"ipaddr": ["198.18.0.1"]}, "ipaddr must be [src, dst]"),
        ("activate", {"numlist": [10], "wait": True, "timeout": -1}, "timeout must be between"),
        ("nonsense", {}, "unknown request 'nonsense'"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(daemon: Any, op: str, args: dict[str, Any], needle: str) -> None:
    d, net = daemon
    net.a.activate(net.pa.by_numbers([10], None), None)
    settle(net)
    before = net.a.listing("1+", None, None)
    with pytest.raises(RequestError) as ei:
        net.loop.run_until_complete(d.handle(op, args))
    assert needle in str(ei.value)
    after = net.a.listing("1+", None, None)
    assert _summary(after) == _summary(before)


def _summary(listing: dict[str, Any]) -> list[Any]:
    return [(t["tunnel"], t["state"], [(c["tunnel"], c["state"]) for c in t["phase2"]]) for t in listing["tunnels"]]


def test_wait_returns_outcomes(daemon: Any) -> None:
    d, net = daemon
    out = net.loop.run_until_complete(d.handle("activate", {"numlist": [10, 11], "wait": True, "timeout": 5}))
    assert out["timed_out"] is False
    got = [(r["phase"], r["state"]) for r in out["results"]]
    assert got == [(1, "established"), (2, "established"), (2, "established")]


def test_a_group_cycle_is_a_clear_refusal_not_an_internal_error(daemon: Any) -> None:
    d, net = daemon
    pol = net.a.policies
    net.a.policies = IndexedPolicies(
        pol.p1_by_number.values(),
        pol.p2_by_number.values(),
        [Group("ring", ("198.18.0.2", "ring2")), Group("ring2", ("ring",))],
    )
    with pytest.raises(RequestError, match=r"group 'ring' contains itself \(ring -> ring2 -> ring\)"):
        net.loop.run_until_complete(d.handle("activate", {"remid": "ring"}))
    assert not net.a.p1  # nothing was started for the members before the cycle


def test_activate_autostart_starts_the_autostart_definitions_only(daemon: Any) -> None:
    d, net = daemon
    with pytest.raises(RequestError, match="no tunnel in the database is marked autostart"):
        net.loop.run_until_complete(d.handle("activate", {"autostart": True}))
    assert not net.a.p1
    pol = net.a.policies
    p2s = [dataclasses.replace(p, autostart=p.number == 11) for p in pol.p2_by_number.values()]
    net.a.policies = IndexedPolicies(pol.p1_by_number.values(), p2s, pol.groups.values())
    out = net.loop.run_until_complete(d.handle("activate", {"autostart": True, "wait": True, "timeout": 5}))
    # phase 2 tunnel 11 is marked autostart: it brings its phase 1; 10 is not started
    assert [(r["phase"], r["db"], r["state"]) for r in out["results"]] == [
        (1, 1, "established"),
        (2, 11, "established"),
    ]
    (t,) = net.a.listing("1+", None, None)["tunnels"]
    assert [c["db"] for c in t["phase2"]] == [11]
    # again: what is up exists
    out = net.loop.run_until_complete(d.handle("activate", {"autostart": True}))
    assert [r["status"] for r in out["results"]] == ["exists", "exists"]


def test_a_data_plane_refusing_the_ike_sockets_stops_iked_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # The XFRM bypass policy can be refused by the kernel: iked must say so and exit 1, not crash.
    from ike.daemon import main as iked_main
    from ike.dataplane.base import DataPlaneError
    from ike.dataplane.none import NoneDataPlane

    class Refusing(NoneDataPlane):
        def bypass_socket(self, sock: object) -> None:
            raise DataPlaneError("cannot set an IPsec bypass policy on the IKE socket: Invalid argument")

    monkeypatch.setattr(iked_main, "make_dataplane", lambda _name: Refusing())
    files = ["--db", str(tmp_path / "x.db"), "--conf", str(tmp_path / "none.conf"), "--rundir", str(tmp_path)]
    ports = ["--ike-port", "0", "--natt-port", "0"]
    ns = parse_args([*files, *ports, "--dataplane", "none", "--listen", "127.0.0.1", "--no-autostart"])
    (tmp_path / "none.conf").write_text("log_destination = stderr\n")
    rc = asyncio.run(Daemon(ns).run())
    assert rc == 1
    assert "the data plane cannot take the IKE sockets: cannot set an IPsec bypass policy" in capfd.readouterr().err
