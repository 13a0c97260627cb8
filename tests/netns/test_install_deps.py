"""Every program a namespace, interop or benchmark test asks for is installed by scripts/install-deps.sh.

A fresh CI machine has only what install-deps.sh puts there; a tool named in `require_tools(...)`
(tests) or `prerequisites(...)` (bench) whose Debian package is missing from APT_PACKAGES fails
those tests under CI=true. The program -> package table below is checked against dpkg where the
program is installed, so it cannot silently name the wrong package. Needs no root.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-deps.sh"

# program -> the Debian 12 package that ships it
PACKAGE_OF = {
    "ip": "iproute2",
    "ping": "iputils-ping",
    "tcpdump": "tcpdump",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "strace": "strace",
    "iperf3": "iperf3",
    "nft": "nftables",
    "sysctl": "procps",
}


def apt_packages() -> set[str]:
    m = re.search(r"^APT_PACKAGES=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert m, f"no APT_PACKAGES=(...) in {SCRIPT}"
    return set(m.group(1).split())


def required_tools() -> dict[str, set[str]]:
    """program -> files that ask for it, from the string arguments of require_tools()/prerequisites()."""
    found: dict[str, set[str]] = {}
    files = [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name not in ("require_tools", "prerequisites"):
                continue
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.setdefault(arg.value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_scan_finds_the_known_callers() -> None:
    tools = required_tools()
    # if these vanish the scan is broken, not the script
    assert "tests/netns/test_xfrm_netns.py" in tools.get("strace", set()), tools
    assert "bench/esp_throughput.py" in tools.get("iperf3", set()), tools


def test_every_required_program_is_installed_by_install_deps() -> None:
    pkgs = apt_packages()
    tools = required_tools()
    unknown = {t: sorted(f) for t, f in tools.items() if t not in PACKAGE_OF}
    assert not unknown, f"add these programs to PACKAGE_OF here and their packages to APT_PACKAGES: {unknown}"
    missing = {f"{t} ({PACKAGE_OF[t]})": sorted(tools[t]) for t in tools if PACKAGE_OF[t] not in pkgs}
    assert not missing, f"scripts/install-deps.sh APT_PACKAGES lacks the packages of these programs: {missing}"


@pytest.mark.parametrize("program", sorted(PACKAGE_OF))
def test_package_table_agrees_with_dpkg(program: str) -> None:
    if shutil.which(program) is None or shutil.which("dpkg") is None:
        pytest.skip(f"{program} or dpkg not installed here: nothing to check the table against")
    # usrmerge: dpkg knows /bin/ip, PATH finds /usr/sbin/ip; ask for each spelling
    owners = set()
    for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin"):
        out = subprocess.run(["dpkg", "-S", f"{d}/{program}"], capture_output=True, text=True, check=False)
        owners |= {line.split(":", 1)[0] for line in out.stdout.splitlines() if ":" in line}
    assert PACKAGE_OF[program] in owners, f"{program} belongs to {owners}, not {PACKAGE_OF[program]}"
