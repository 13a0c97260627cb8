"""The control socket between `ike` and `iked`: JSON lines over a unix stream socket.

    request:  {"op": "activate" | "list" | "remove" | "log" | "reload" | "ping", "args": {...}}\\n
    reply:    {"ok": true, "result": ...}\\n   or   {"ok": false, "error": "what went wrong"}\\n

One reply per request, in order; a connection may carry several requests. The socket is
IKE_RUNDIR/iked.sock, mode 0600, and the daemon also checks the peer's uid with SO_PEERCRED:
only root may talk to it (the AIX manual: "You must have root access to use the ike command").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("ike.daemon.control")

MAX_LINE = 1 << 20
Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to `ike` as is."""


def peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, path: Path, handler: Handler, allowed_uids: frozenset[int] = frozenset({0})) -> None:
        self.path = path
        self.handler = handler
        self.allowed_uids = allowed_uids
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                raise RuntimeError(f"another iked is already running (its control socket {self.path} answers)")
            self.path.unlink()
        # Bind under a restrictive umask so there is no moment at which the socket is open to all.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else None
            if uid is None or uid not in self.allowed_uids:
                log.error("refused a control connection from uid %s: only root may control iked", uid)
                # Take (and ignore) the request first so the client is not cut off mid-send.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readline(), 1.0)
                await _reply(writer, {"ok": False, "error": "permission denied: only root may control iked"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _reply(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                await _reply(writer, await self._dispatch(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"request is not JSON: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": 'request must be an object with a string "op"'}
        args = req.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": '"args" must be an object'}
        try:
            return {"ok": True, "result": await self.handler(req["op"], args)}
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:
            # A bug in handling one request must not take the daemon or its tunnels down.
            log.exception("control request %s failed", req["op"])
            return {"ok": False, "error": f"internal error in iked while handling {req['op']}: {e}"}


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def _answers(path: Path) -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (TimeoutError, OSError):
        return False
    w.close()
    return True
