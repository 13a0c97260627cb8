"""Filesystem locations. Each has a system default and an environment variable that moves it,
so tests and several daemons can run side by side on one machine.

`pathlib` is imported only when a Path is asked for: `ike` talking to the daemon needs just the
control socket's name, and every import counts against its start-up time."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def _path(name: str) -> Path:
    from pathlib import Path

    return Path(name)


def db_path() -> Path:
    return _path(os.environ.get("IKE_DB", "/var/lib/ike/ike.db"))


def conf_path() -> Path:
    """The file the AIX manual names for the daemon's log level and destination."""
    return _path(os.environ.get("IKE_CONF", "/etc/isakmpd.conf"))


def run_dir() -> Path:
    return _path(run_dir_name())


def run_dir_name() -> str:
    return os.environ.get("IKE_RUNDIR", "/run/ike")


def control_socket_name() -> str:
    return os.path.join(run_dir_name(), "iked.sock")


def control_socket() -> Path:
    return _path(control_socket_name())


def pid_file() -> Path:
    return run_dir() / "iked.pid"
