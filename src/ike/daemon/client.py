"""The `ike` side of the control socket (blocking; `ike` is a short-lived command). Imports only
what a request needs: `ike`'s start-up time is most of a user's wait (docs/performance.md)."""

from __future__ import annotations

# The C half of `socket`: `socket` itself imports `enum` and `selectors`, milliseconds of every
# `ike` command, for wrappers a unix stream request does not use. Its errors are the builtin ones.
import _socket
import errno
import os

from ike import paths
from ike.daemon import jsonlines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


class ClientError(Exception):
    """Talking to iked failed; the message says why and what to do."""


class NotRoot(ClientError):
    pass


class DaemonNotRunning(ClientError):
    pass


class DaemonError(ClientError):
    """iked answered with an error."""


def request(op: str, args: dict[str, Any] | None = None, timeout: float | None = 30.0, path: Path | None = None) -> Any:
    """Send one request and return the daemon's `result`; raise a ClientError otherwise."""
    sock_path = str(path) if path is not None else paths.control_socket_name()
    if os.geteuid() != 0:
        raise NotRoot("ike: you must be root to control active tunnels (try sudo)")
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        try:
            s.connect(sock_path)
        except FileNotFoundError:
            raise DaemonNotRunning(
                f"ike: the tunnel manager iked is not running (no control socket at {sock_path}); "
                "start it with 'systemctl start iked' or run 'iked'"
            ) from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"ike: the tunnel manager iked is not running (stale control socket {sock_path}); "
                "start it with 'systemctl start iked' or run 'iked'"
            ) from None
        except PermissionError:
            raise NotRoot(f"ike: permission denied on {sock_path}; you must be root") from None
        except OSError as e:
            raise DaemonNotRunning(f"ike: cannot reach iked at {sock_path}: {e.strerror}") from None
        s.settimeout(timeout)
        try:
            s.sendall(jsonlines.dumps({"op": op, "args": args or {}}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # iked refused us; its reply (if any) says why
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):  # a list: big listings stay linear
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                raise ClientError(f"ike: iked did not answer within {timeout:.0f} s") from None
            except OSError as e:
                if e.errno == errno.ECONNRESET:
                    raise ClientError("ike: iked closed the connection (did it stop?)") from None
                raise ClientError(f"ike: reading from iked failed: {e.strerror}") from None
            if not chunk:
                raise ClientError("ike: iked closed the connection without answering (did it stop?)")
            chunks.append(chunk)
        buf = b"".join(chunks)
    finally:
        s.close()
    try:
        reply = jsonlines.loads(buf.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ClientError("ike: iked sent a reply that is not JSON") from None
    if not isinstance(reply, dict):
        raise ClientError("ike: iked sent a malformed reply")
    if not reply.get("ok"):
        raise DaemonError(f"ike: {reply.get('error', 'iked refused the request')}")
    return reply.get("result")
