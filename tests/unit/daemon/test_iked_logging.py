"""IKE_CONF parsing and switching the log destination and level in a running process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ike.daemon import logging_conf
from ike.daemon.logging_conf import LogConfigError, LogSettings, LogSwitch, parse


def test_parse_defaults_comments_and_aliases() -> None:
    assert parse("") == LogSettings("events", "syslog", "daemon")
    s = parse("# comment\n log_level = Information  # all of it\nlog_file=/var/log/iked.log\n")
    assert s == LogSettings("information", "/var/log/iked.log", "daemon")
    assert parse("log_level = info").level == "information"
    assert parse("log_destination = stderr\nsyslog_facility = local4").facility == "local4"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("log_level = loud", "line 1: log level 'loud' is not one of none, errors, events, information"),
        ("\nlog_destination = relative.log", "line 2: log destination 'relative.log' must be"),
        ("verbosity = 3", "unknown key 'verbosity'"),
        ("just words", "is not 'key = value'"),
        ("syslog_facility = nowhere", "unknown syslog facility"),
    ],
)
def test_parse_errors_name_line_and_fix(text: str, needle: str) -> None:
    with pytest.raises(LogConfigError) as ei:
        parse(text, "conf")
    assert needle in str(ei.value)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert logging_conf.load(tmp_path / "nope.conf") == LogSettings()


def test_switch_destination_and_level_and_keep_old_on_error(tmp_path: Path) -> None:
    conf = tmp_path / "isakmpd.conf"
    first, second = tmp_path / "one.log", tmp_path / "two.log"
    log = logging.getLogger("ike.test.switch")
    sw = LogSwitch()
    try:
        conf.write_text(f"log_level = errors\nlog_destination = {first}\n")
        sw.reload(conf)
        log.info("event-one")
        log.error("error-one")
        conf.write_text(f"log_level = information\nlog_destination = {second}\n")
        sw.reload(conf)
        log.debug("debug-two")
        conf.write_text("log_level = nonsense\n")
        with pytest.raises(LogConfigError):
            sw.reload(conf)
        log.debug("debug-three")  # still information level, still file two
        conf.write_text(f"log_level = none\nlog_destination = {second}\n")
        sw.reload(conf)
        log.error("silenced")
    finally:
        sw.close()
    one, two = first.read_text(), second.read_text()
    assert "error-one" in one and "event-one" not in one
    assert "debug-two" in two and "debug-three" in two and "debug-two" not in one
    assert "silenced" not in two
    assert first.stat().st_mode & 0o077 == 0


def test_syslog_without_socket_falls_back_to_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(logging_conf, "SYSLOG_SOCKET", str(tmp_path / "no-such-socket"))
    sw = LogSwitch()
    try:
        warning = sw.apply(LogSettings())
    finally:
        sw.close()
    assert warning is not None and "logging to stderr" in warning


def test_syslog_is_the_default_and_carries_the_facility_and_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A syslog daemon of our own: a unix datagram socket where /dev/log would be.
    import socket

    path = tmp_path / "log"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(path))
    srv.settimeout(5)
    monkeypatch.setattr(logging_conf, "SYSLOG_SOCKET", str(path))
    sw = LogSwitch()
    try:
        assert sw.apply(logging_conf.parse("syslog_facility = local4")) is None  # no fallback warning
        logging.getLogger("ike.test.syslog").info("tunnel up")
        logging.getLogger("ike.test.syslog").debug("not at events")
        logging.getLogger("ike.test.syslog").error("tunnel failed")
        got = [srv.recv(4096).decode(), srv.recv(4096).decode()]
    finally:
        sw.close()
        srv.close()
    # <PRI> = facility * 8 + severity: local4 is 20, info 6, error 3
    assert got[0].startswith("<166>iked[") and "tunnel up" in got[0], got
    assert got[1].startswith("<163>iked[") and "tunnel failed" in got[1], got


def test_unwritable_destination_keeps_old_handler(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    sw = LogSwitch()
    try:
        sw.apply(LogSettings("events", str(good)))
        (tmp_path / "dir").write_text("a file where a directory should be")
        with pytest.raises(LogConfigError, match="cannot open log file"):
            sw.apply(LogSettings("events", str(tmp_path / "dir" / "x.log")))
        logging.getLogger("ike.test.keep").info("still-here")
    finally:
        sw.close()
    assert "still-here" in good.read_text()


def test_close_gives_the_logger_back(tmp_path: Path) -> None:
    logger = logging.getLogger("ike")
    before = (logger.propagate, logger.level, list(logger.handlers))
    sw = LogSwitch()
    sw.apply(LogSettings("information", str(tmp_path / "x.log")))
    assert logger.propagate is False
    sw.close()
    assert (logger.propagate, logger.level, list(logger.handlers)) == before
