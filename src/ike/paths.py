"""Filesystem locations. Each has a system default and an environment variable that moves it,
so tests and several daemons can run side by side on one machine."""

from __future__ import annotations

import os
from pathlib import Path


def db_path() -> Path:
    return Path(os.environ.get("IKE_DB", "/var/lib/ike/ike.db"))


def conf_path() -> Path:
    """The file the AIX manual names for the daemon's log level and destination."""
    return Path(os.environ.get("IKE_CONF", "/etc/isakmpd.conf"))


def run_dir() -> Path:
    return Path(os.environ.get("IKE_RUNDIR", "/run/ike"))


def control_socket() -> Path:
    return run_dir() / "iked.sock"


def pid_file() -> Path:
    return run_dir() / "iked.pid"
