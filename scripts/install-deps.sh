#!/usr/bin/env bash
# Installs what the tests and the demo need: Debian packages (strongSwan as the interop peer, ping,
# tcpdump, iperf3, iproute2, strace for the XFRM message tests, unshare, python3-venv) and the project
# itself with its test extras, by default into the checkout's .venv. Every program a test asks for with
# require_tools() must have its package here (tests/netns/test_install_deps.py checks). Safe to run
# again: apt is only touched when a package is missing, and no strongSwan service is left running in
# the root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
              libstrongswan-standard-plugins iperf3 iputils-ping tcpdump iproute2 procps nftables strace
              util-linux python3-venv)
VENV_PYTHON="$PWD/.venv/bin/python"
PYTHON="${PYTHON:-$VENV_PYTHON}"

log() { printf '== %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing Debian packages: ${missing[*]}; run 'make install' as root" >&2
        exit 1
    fi
    log "apt: installing ${missing[*]}"
    # Installing strongSwan must not start a charon in the root namespace (tests run their own per
    # namespace); policy-rc.d is Debian's switch for that, removed again if we added it.
    added_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap '[[ -n "$added_policy" ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
else
    log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# A charon started by a package script (strongswan-starter's init script, pulled in by strongswan-charon)
# or left over would hold /run/charon.pid and the IKE ports of the root namespace; the tests' charons
# run in their own namespaces with their own /run. Stop starter first, or it restarts charon.
root_netns=$(readlink /proc/$$/ns/net)  # make install runs in the root namespace
for pidfile in /run/starter.charon.pid /run/charon.pid; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [[ "$(readlink /proc/"$pid"/ns/net)" == "$root_netns" ]]; then
        log "stopping $(cat /proc/"$pid"/comm 2>/dev/null || echo pid) (pid $pid, from $pidfile) in the root namespace"
        kill "$pid" || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    kill -0 "$pid" 2>/dev/null || rm -f "$pidfile"
done

# By default the project lives in a virtualenv in this checkout (.venv): Debian's python3 refuses pip
# installs into itself (PEP 668), and an editable install into a shared interpreter would repoint
# `import ike` for everyone to this checkout. The venv is made from the distribution's python3 when it
# is new enough: it is what a gateway runs, and Debian builds it with profile-guided optimisation into
# a static binary, so each `ike` command starts faster than on a shared, unoptimised build such as
# pyenv's default (docs/performance.md, item 15). BASE_PYTHON=... picks another.
if [[ $PYTHON == "$VENV_PYTHON" && ! -x $VENV_PYTHON ]]; then
    base=
    for cand in ${BASE_PYTHON:-} /usr/bin/python3 python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            base=$(command -v "$cand")
            break
        fi
    done
    if [[ -z $base ]]; then
        echo "no Python >= 3.11 found (tried ${BASE_PYTHON:-} /usr/bin/python3 python3); install one or set BASE_PYTHON=..." >&2
        exit 1
    fi
    log "venv: creating .venv from $base ($("$base" --version))"
    "$base" -m venv .venv
    # Python 3.11's venv comes with setuptools, which nothing here needs at run time (pip builds ike
    # in an isolated environment) and whose distutils-precedence.pth costs every `ike` command an
    # import of _distutils_hack (0.3 ms); venvs from Python 3.12 on leave it out.
    "$VENV_PYTHON" -m pip uninstall -y -q setuptools >/dev/null 2>&1 || true
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python >= 3.11 needed, {sys.executable} is {sys.version.split()[0]} (set PYTHON=...)")
PY
# Say which interpreter is behind it: a .venv made earlier from another one is kept as it is (item 15
# of docs/performance.md says why remaking it from Debian's python3 can be worth it).
log "pip: installing ike with test extras into $("$PYTHON" -c 'import os, sys
print(sys.prefix, "(Python", sys.version.split()[0], "from", os.path.realpath(getattr(sys, "_base_executable", sys.executable)) + ")")')"
export PIP_ROOT_USER_ACTION=ignore
pip_install() {
    # Quiet unless it fails; the machine's pip config names local indexes that may not exist (noise).
    local out
    if ! out=$("$PYTHON" -m pip install -q --disable-pip-version-check "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
    printf '%s\n' "$out" | grep -v -e 'is ignored: it is neither a file nor a directory' -e '^$' || true
}
# pytest-timeout: a hung test fails by itself instead of eating CI's 90 minutes (make pytest sets it).
pip_install -e '.[test]' 'pytest-timeout>=2.2'
# An editable install leaves our modules uncompiled, and where PYTHONDONTWRITEBYTECODE is set (this
# machine, CI) every `ike` and `iked` start would compile them again: about 15 ms of each `ike`
# command. A wheel install compiles at install time; do the same here (stale files are ignored).
"$PYTHON" -m compileall -q src >/dev/null
