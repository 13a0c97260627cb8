"""packaging/iked.service: the keys iked relies on, checked against the code they point at, and
`systemd-analyze verify` where systemd is installed. Needs no root and starts nothing.

The unit names `iked` without a directory (systemd resolves it in its fixed search path, see the
unit's header); for the verify run the program is replaced by the console script pip installed for
the interpreter running this test, so every other line is checked as systemd would read it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from ike import paths
from ike.daemon.main import parse_args

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "iked.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order (systemd keys may repeat). Comments are # or ; lines."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {n}: continuation lines are not expected here"
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"line {n} is neither a section nor key=value: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for v in unit["Service"].get("Environment", []):
        for item in shlex.split(v):
            k, _, val = item.partition("=")
            env[k] = val
    return env


def test_execstart_runs_the_iked_console_script_with_arguments_iked_accepts(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    assert one(unit, "Service", "Type") == "simple"  # iked stays in the foreground
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    # bare name: systemd's search path (/usr/local/bin for a root pip install, /usr/bin for a package)
    assert argv[0] == "iked", argv
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("iked") == "ike.daemon.main:main", scripts
    ns = parse_args(argv[1:])  # iked's own parser: a flag it lacks fails here, not at boot
    assert ns.dataplane == "auto"
    assert ns.listen == ["0.0.0.0", "::"]  # the wildcard default the unit relies on


def test_environment_matches_the_directories_systemd_makes(
    unit: dict[str, dict[str, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(unit)
    assert set(env) >= {"IKE_DB", "IKE_CONF", "IKE_RUNDIR"}, env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # what iked reads from them
    assert str(paths.db_path()) == env["IKE_DB"] and str(paths.conf_path()) == env["IKE_CONF"]
    assert paths.control_socket().parent == Path(env["IKE_RUNDIR"])
    state = PurePosixPath("/var/lib") / one(unit, "Service", "StateDirectory")
    run = PurePosixPath("/run") / one(unit, "Service", "RuntimeDirectory")
    assert PurePosixPath(env["IKE_DB"]).parent == state, (env, state)
    assert PurePosixPath(env["IKE_RUNDIR"]) == run, (env, run)
    writable = one(unit, "Service", "ReadWritePaths").split()
    assert str(state) in writable and str(run) in writable, writable
    assert one(unit, "Service", "ProtectSystem") == "strict"  # so those are all it may write


def test_signals_capabilities_and_install(unit: dict[str, dict[str, list[str]]]) -> None:
    # iked deletes every SA on SIGTERM and re-reads its log settings and database on SIGHUP
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert shlex.split(one(unit, "Service", "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]
    need = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}  # routes/XFRM/TUN, raw ESP, port 500
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) >= need
    assert set(one(unit, "Service", "AmbientCapabilities").split()) >= need
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) >= {
        "AF_UNIX",  # control socket
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",  # XFRM, routes
    }
    assert one(unit, "Service", "DeviceAllow").split() == ["/dev/net/tun", "rw"]  # userspace ESP
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (the key checks above still ran)")
    iked = Path(sysconfig.get_path("scripts")) / "iked"
    if not os.access(iked, os.X_OK):
        pytest.fail(
            f"no iked console script at {iked} for {sys.executable}: is the project installed (pip install -e .)?"
        )
    text = UNIT.read_text()
    assert "\nExecStart=iked " in text
    copy = tmp_path / "iked.service"
    copy.write_text(text.replace("\nExecStart=iked ", f"\nExecStart={iked} "))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # rc 0 alone is not enough: unknown keys and bad values are warnings on stderr
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stdout + proc.stderr
