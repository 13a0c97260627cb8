"""`ike` against the daemon: command -> request mapping, rendering, exit codes. Listings come from
a real manager (toy engines) so the renderer sees what iked really sends."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_manager import Net, settle

from harness import require_root, require_tools
from ike.cli import active
from ike.cli.grammar import parse
from ike.daemon import client


def req(argv: str) -> tuple[str, dict[str, Any]]:
    return active.to_request(parse(argv.split()))


def test_requests_follow_the_manual() -> None:
    assert req("cmd=activate numlist=1,3,5-7") == (
        "activate",
        {"phase": None, "wait": False, "numlist": [1, 3, 5, 6, 7]},
    )
    _op, args = req("cmd=activate phase=2 remid=198.19.2.0,255.255.255.0 wait")
    assert args["remid"] == "198.19.2.0,255.255.255.0" and args["wait"] and args["timeout"] > 0
    assert req("cmd=activate phase=2 ipaddr=198.18.0.1,198.18.0.2")[1]["ipaddr"] == ["198.18.0.1", "198.18.0.2"]
    assert req("cmd=activate autostart")[1]["autostart"] is True
    assert req("cmd=activate phase=1 namelist=a,b")[1]["namelist"] == ["a", "b"]
    assert req("cmd=list") == ("list", {"phase": "1+", "numlist": None, "role": None})  # 1+ is the default
    assert req("cmd=list phase=2 role=r numlist=2") == ("list", {"phase": "2", "numlist": [2], "role": "r"})
    assert req("cmd=remove all") == ("remove", {"phase": None, "numlist": None})
    assert req("cmd=remove phase=1 numlist=1-3") == ("remove", {"phase": "1", "numlist": [1, 2, 3]})
    assert req("cmd=log") == ("log", {})


class FakeDaemonError:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, op: str, args: dict[str, Any], timeout: float | None) -> Any:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (client.NotRoot("ike: you must be root"), active.EXIT_NOT_ROOT),
        (client.DaemonNotRunning("ike: the tunnel manager iked is not running"), active.EXIT_NOT_RUNNING),
        (client.DaemonError("ike: no active phase 1 tunnel numbered 9"), active.EXIT_FAILED),
    ],
)
def test_client_errors_become_messages_and_exit_codes(exc: Exception, code: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert active.run(parse(["cmd=list"]), FakeDaemonError(exc), out, err) == code
    assert str(exc) in err.getvalue() and out.getvalue() == ""


@pytest.mark.parametrize("argv", [["cmd=list"], ["cmd=activate", "numlist=1"], ["cmd=remove", "all"], ["cmd=log"]])
def test_non_root_gets_exit_4_before_the_daemon_is_asked(argv: list[str], tmp_path: Path) -> None:
    """docs/daemon.md: exit 4 when the caller is not root. With no daemon at IKE_RUNDIR, a check
    made any later would give 3 (not running) instead."""
    require_root()
    require_tools("setpriv")
    os.chmod(tmp_path, 0o755)
    src = str(Path(active.__file__).resolve().parents[2])
    as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    r = subprocess.run(
        [*as_nobody, sys.executable, "-m", "ike.cli.main", *argv],
        capture_output=True,
        text=True,
        cwd="/",
        env={"IKE_RUNDIR": str(tmp_path), "IKE_DB": str(tmp_path / "x.db"), "PYTHONPATH": src},
        timeout=60,
    )
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "you must have root access to use the ike command" in r.stderr and r.stdout == ""


def test_activate_needs_a_selector() -> None:
    err = io.StringIO()
    assert active.run(parse(["cmd=activate"]), FakeDaemonError(AssertionError()), io.StringIO(), err) == 1
    assert "say which tunnels to activate" in err.getvalue()


@pytest.fixture
def net() -> Any:
    loop = asyncio.new_event_loop()
    try:
        yield Net(loop)
    finally:
        loop.close()


def daemon_for(net: Net) -> Any:
    """A requester answering from manager a, as iked's handler would."""

    def call(op: str, args: dict[str, Any], timeout: float | None) -> Any:
        m = net.a
        if op == "list":
            return json.loads(json.dumps(m.listing(args["phase"], args["numlist"], args["role"])))
        if op == "remove":
            return {"removed": m.remove(int(args["phase"]) if args["phase"] else None, args["numlist"])}
        raise AssertionError(op)

    return call


def run(net: Net, argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = active.run(parse(argv.split()), daemon_for(net), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_concise_verbose_and_json_listings(net: Net) -> None:
    net.a.activate(net.pa.by_numbers([10, 11], None), None)
    settle(net)
    rc, text, _ = run(net, "cmd=list")
    lines = text.splitlines()
    assert rc == 0 and lines[0].split() == ["Phase", "Tun", "Id", "DB", "Id", "Status", "Role", "Local", "Addr/Id",
                                             "Remote", "Addr/Id"]  # fmt: skip
    assert lines[1].split()[:5] == ["1", "1", "1", "Active", "Initiator"]
    assert lines[2].split()[:5] == ["2", "1", "10", "Active", "Initiator"]
    assert lines[3].split()[:5] == ["2", "2", "11", "Active", "Initiator"]
    assert "198.19.1.0/24 proto 6" in lines[3]

    rc, text, _ = run(net, "cmd=list phase=2 numlist=2 verbose")
    assert text.index("Phase 1 tunnel 1") < text.index("Phase 2 tunnel 2 (net1, database tunnel 11)")
    for label in ("Algorithms:", "SPIs:", "Lifetime:", "3600 s", "s left", "Traffic:", "NAT:", "Refreshed:"):
        assert label in text

    rc, text, _ = run(net, "cmd=list phase=1 format=json")
    data = json.loads(text)
    assert [t["tunnel"] for t in data["tunnels"]] == [1] and "phase2" not in data["tunnels"][0]

    rc, text, err = run(net, "cmd=list phase=2 numlist=2,7")
    assert rc == 1 and "no active phase 2 tunnel number 7" in err and "net1" not in err


def test_failure_listing_shows_reason_and_offers(net: Net) -> None:
    from ike.daemon.policies import IndexedPolicies

    net.fb.set_policies(IndexedPolicies([], [], []))  # b knows nothing: refuses with both offers
    net.a.activate(net.pa.by_numbers([1], 1), 1)
    settle(net)
    out, err = io.StringIO(), io.StringIO()

    def b_daemon(op: str, args: dict[str, Any], timeout: float | None) -> Any:
        return json.loads(json.dumps(net.b.listing("1+", None, None)))

    assert active.run(parse(["cmd=list"]), b_daemon, out, err) == 0
    text = out.getvalue()
    assert "Failed" in text and "reason: no phase 1 definition named gw" in text
    assert "we offered:   aes-cbc-256" in text and "peer offered: 3des" in text


def test_wait_outcome_rendering_and_status() -> None:
    result = {
        "timed_out": False,
        "results": [
            {"phase": 1, "db": 1, "name": "gw", "tunnel": 4, "status": "started", "state": "failed",
             "message": "responder accepted none of our IKE proposals", "notify": "NO_PROPOSAL_CHOSEN",
             "offered": ["IKE aes-cbc-256/dh19"], "peer_offered": []},
            {"phase": 2, "db": 1, "name": "net", "tunnel": 3, "status": "exists", "state": "established"},
        ],
    }  # fmt: skip
    out = io.StringIO()
    rc = active.run(parse(["cmd=activate", "numlist=1", "wait"]), lambda *a: result, out, io.StringIO())
    text = out.getvalue()
    assert rc == 1
    assert (
        "phase 1 tunnel gw (database tunnel 1): failed (active tunnel 4): responder accepted none of our IKE "
        "proposals (notify NO_PROPOSAL_CHOSEN)" in text
    )
    assert "we offered:   IKE aes-cbc-256/dh19" in text
    assert "phase 2 tunnel net (database tunnel 1): already active as active tunnel 3" in text
