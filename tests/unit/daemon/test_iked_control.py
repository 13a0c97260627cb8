"""The control socket: JSON lines, root only, clear errors when the daemon is absent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import require_root
from ike.daemon import client
from ike.daemon.control import ControlServer, RequestError


class ServerThread:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.server = ControlServer(path, self.handle)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((op, args))
        if op == "boom":
            raise KeyError("oops")
        if op == "refuse":
            raise RequestError("no such tunnel 9")
        if op == "slow":
            await asyncio.sleep(0.2)
        if op == "big":
            return [{"tunnel": n, "state": "established"} for n in range(args["n"])]
        if op == "list":
            return {"phase": args.get("phase") or "1+", "tunnels": [], "missing": []}
        return {"echo": args}

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "run" / "iked.sock") as s:
        yield s


def raw(path: Path, payload: bytes) -> list[dict[str, Any]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


def test_request_reply_and_socket_mode(srv: ServerThread) -> None:
    assert client.request("ping", {"x": 1}, path=srv.path) == {"echo": {"x": 1}}
    assert srv.path.stat().st_mode & 0o777 == 0o600


def test_large_reply_arrives_whole_and_fast(srv: ServerThread) -> None:
    import time

    t = time.monotonic()
    got = client.request("big", {"n": 200_000}, path=srv.path)  # about 7 MB of JSON
    assert len(got) == 200_000 and got[-1] == {"tunnel": 199_999, "state": "established"}
    assert time.monotonic() - t < 10


def test_bad_requests_get_errors_and_connection_goes_on(srv: ServerThread) -> None:
    replies = raw(srv.path, b"not json\n[1]\n" + b'{"op": "x", "args": 3}\n' + b'{"op": "ping"}\n')
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert "not JSON" in replies[0]["error"]
    assert '"op"' in replies[1]["error"]
    assert '"args"' in replies[2]["error"]


def test_handler_errors_do_not_stop_the_server(srv: ServerThread) -> None:
    with pytest.raises(client.DaemonError, match="no such tunnel 9"):
        client.request("refuse", path=srv.path)
    with pytest.raises(client.DaemonError, match="internal error in iked while handling boom"):
        client.request("boom", path=srv.path)
    assert client.request("ping", path=srv.path) == {"echo": {}}


def test_second_server_on_live_socket_refuses(srv: ServerThread) -> None:
    other = ControlServer(srv.path, srv.handle)
    with pytest.raises(RuntimeError, match="already running"):
        asyncio.run(other.start())


def test_not_running_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(client.DaemonNotRunning, match=r"iked is not running \(no control socket"):
        client.request("ping", path=tmp_path / "iked.sock")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(client.DaemonNotRunning, match="stale control socket"):
        client.request("ping", path=stale)


def test_stale_socket_is_replaced_at_start(tmp_path: Path) -> None:
    path = tmp_path / "iked.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    with ServerThread(path) as srv:
        assert client.request("ping", path=srv.path) == {"echo": {}}


NOBODY = 65534


def test_non_root_is_refused_by_client_and_by_server() -> None:
    require_root()  # to switch to another uid; under CI=true its absence fails the test
    base = Path(tempfile.mkdtemp(prefix="iked-test-"))
    try:
        os.chmod(base, 0o755)
        with ServerThread(base / "iked.sock") as srv:
            # Open the socket to everyone so that only the SO_PEERCRED check stands in the way.
            os.chmod(srv.path, 0o666)
            _as_nobody(srv)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(srv: ServerThread) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, try both ways in, report, exit without pytest's cleanup
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            lines = []
            try:
                client.request("ping", path=srv.path)
                lines.append("CLIENT accepted")
            except client.NotRoot as e:
                lines.append(f"CLIENT {e}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(srv.path))
            s.sendall(b'{"op": "ping"}\n')
            lines.append("SERVER " + s.recv(4096).decode())
            os.write(w, "\n".join(lines).encode())
        except BaseException as e:
            os.write(w, f"CHILD FAILED {e!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    assert "CLIENT ike: you must be root" in out, out
    assert "only root may control iked" in out
    assert ("ping", {}) not in srv.calls


REPO = Path(__file__).resolve().parents[3]


def test_ike_talks_to_iked_without_importing_what_it_does_not_need(srv: ServerThread) -> None:
    """`ike` against the daemon is most of a user's wait in start-up time: the installed script
    (bin/ike) must not pull in `re`, `json`, `socket`, `enum` or `typing` (docs/performance.md)."""
    require_root()
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "bin" / "ike"), "cmd=list", "phase=2"],
        capture_output=True,
        text=True,
        env={"IKE_RUNDIR": str(srv.path.parent), "PYTHONPATH": str(REPO / "src")},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert srv.calls == [("list", {"phase": "2", "numlist": None, "role": None})], srv.calls
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "ike.daemon.client" in imported  # the check sees our imports at all
    heavy = sorted(imported & {"re", "json", "socket", "enum", "typing", "dataclasses", "pathlib", "selectors"})
    assert heavy == [], heavy


def test_ike_flushes_all_output_and_keeps_its_exit_status_when_it_skips_teardown(tmp_path: Path) -> None:
    """bin/ike leaves with os._exit (no interpreter teardown): everything printed must still
    arrive, through a pipe too, and the exit status must be the command's."""
    import subprocess
    import sys

    env = {"PYTHONPATH": str(REPO / "src"), "IKE_RUNDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(REPO / "bin" / "ike"), "help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "cmd=activate" in r.stdout and r.stdout.endswith("\n"), r
    bad = subprocess.run(
        [sys.executable, str(REPO / "bin" / "ike"), "cmd=nonsense"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "cmd=nonsense" in bad.stderr, bad
