"""The daemon's log level and destination, read from IKE_CONF (the AIX /etc/isakmpd.conf).

Format (documented in docs/daemon.md): one `key = value` per line, `#` starts a comment.

    log_level = events            # none | errors | events | information   (default: events)
    log_destination = syslog      # syslog | stderr | an absolute file path (default: syslog)
    syslog_facility = daemon      # any syslog facility name                (default: daemon)

`log_file = /path` is accepted as a synonym for `log_destination = /path`. A missing file means
the defaults. A file that cannot be parsed is an error naming the line; `ike cmd=log` then keeps
the settings in force and reports the error, so nothing is lost.

Levels map onto Python logging: errors -> ERROR, events -> INFO, information -> DEBUG, none -> off.
Daemon code logs failures with `error`, tunnel and negotiation events with `info` and protocol
detail with `debug`. Key material is never passed to a logger at any level.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass
from pathlib import Path

LEVELS: dict[str, int] = {
    "none": logging.CRITICAL + 10,
    "errors": logging.ERROR,
    "events": logging.INFO,
    "information": logging.DEBUG,
}

# AIX-era spellings people may carry over from isakmpd.conf files.
_LEVEL_ALIASES = {"error": "errors", "event": "events", "info": "information", "all": "information"}

_FACILITIES = logging.handlers.SysLogHandler.facility_names

LOGGER_NAME = "ike"
SYSLOG_SOCKET = "/dev/log"


class LogConfigError(ValueError):
    """IKE_CONF could not be used; the message names the file, line and what to write instead."""


@dataclass(frozen=True)
class LogSettings:
    level: str = "events"
    destination: str = "syslog"  # "syslog", "stderr" or an absolute path
    facility: str = "daemon"

    def describe(self) -> str:
        return f"level {self.level}, destination {self.destination}"


def parse(text: str, source: str = "IKE_CONF") -> LogSettings:
    level, dest, facility = "events", "syslog", "daemon"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise LogConfigError(f"{source} line {lineno}: {raw.strip()!r} is not 'key = value'")
        key, value = (p.strip() for p in line.split("=", 1))
        key = key.lower()
        if key == "log_level":
            v = _LEVEL_ALIASES.get(value.lower(), value.lower())
            if v not in LEVELS:
                raise LogConfigError(
                    f"{source} line {lineno}: log level {value!r} is not one of none, errors, events, information"
                )
            level = v
        elif key in ("log_destination", "log_file"):
            if value in ("syslog", "stderr") or value.startswith("/"):
                dest = value
            else:
                raise LogConfigError(
                    f"{source} line {lineno}: log destination {value!r} must be syslog, stderr or an absolute path"
                )
        elif key == "syslog_facility":
            if value.lower() not in _FACILITIES:
                raise LogConfigError(f"{source} line {lineno}: unknown syslog facility {value!r}")
            facility = value.lower()
        else:
            raise LogConfigError(
                f"{source} line {lineno}: unknown key {key!r}; use log_level, log_destination or syslog_facility"
            )
    return LogSettings(level, dest, facility)


def load(path: Path) -> LogSettings:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LogSettings()
    except (OSError, UnicodeDecodeError) as e:
        raise LogConfigError(f"cannot read {path}: {e}") from None
    return parse(text, str(path))


_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _make_handler(s: LogSettings) -> tuple[logging.Handler, str | None]:
    """The handler for `s`, and a warning when it had to fall back to stderr."""
    if s.destination == "stderr":
        return logging.StreamHandler(sys.stderr), None
    if s.destination == "syslog":
        if os.path.exists(SYSLOG_SOCKET):
            try:
                h: logging.Handler = logging.handlers.SysLogHandler(
                    address=SYSLOG_SOCKET, facility=_FACILITIES[s.facility]
                )
                h.setFormatter(logging.Formatter("iked[%(process)d]: %(levelname)s %(name)s: %(message)s"))
                return h, None
            except OSError as e:
                return logging.StreamHandler(sys.stderr), f"syslog unavailable ({e}); logging to stderr"
        return logging.StreamHandler(sys.stderr), f"no syslog socket at {SYSLOG_SOCKET}; logging to stderr"
    path = Path(s.destination)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
    except OSError as e:
        raise LogConfigError(f"cannot open log file {path}: {e}") from None
    os.chmod(path, 0o600)  # logs name peers and identities
    return fh, None


class LogSwitch:
    """Owns the handler on the `ike` logger; `apply` swaps it atomically (open the new one first,
    so a bad destination leaves the old one in place)."""

    def __init__(self) -> None:
        self.current: LogSettings | None = None
        self._handler: logging.Handler | None = None
        self._saved: tuple[bool, int] | None = None  # the logger's propagate and level before us

    def apply(self, s: LogSettings) -> str | None:
        handler, warning = _make_handler(s)
        if handler.formatter is None:
            handler.setFormatter(logging.Formatter(_FORMAT))
        logger = logging.getLogger(LOGGER_NAME)
        if self._saved is None:
            self._saved = (logger.propagate, logger.level)
        logger.propagate = False
        logger.setLevel(LEVELS[s.level])
        logger.addHandler(handler)
        old, self._handler, self.current = self._handler, handler, s
        if old is not None:
            logger.removeHandler(old)
            old.close()
        if warning:
            logger.warning("%s", warning)
        return warning

    def reload(self, path: Path) -> LogSettings:
        """Re-read `path` and switch; raises LogConfigError and keeps the old settings on failure."""
        s = load(path)
        self.apply(s)
        return s

    def close(self) -> None:
        logger = logging.getLogger(LOGGER_NAME)
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self._saved is not None:
            logger.propagate, level = self._saved
            logger.setLevel(level)
            self._saved = None
