"""The half of `ike` that talks to the running daemon: activate, list (active tunnels), remove
(active tunnels) and log. `ike.cli.main` hands every command without `db` here.

Exit status: 0 success; 1 the daemon refused or a tunnel failed (or, with `wait`, did not come
up); 3 iked is not running; 4 the caller is not root.
"""

from __future__ import annotations

import sys
import time

from ike.daemon import client

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: `typing` costs `ike` start-up time
    from collections.abc import Callable
    from typing import Any, TextIO

    from ike.cli.grammar import Command

    Requester = Callable[[str, dict[str, Any], float | None], Any]

EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
EXIT_NOT_ROOT = 4

WAIT_TIMEOUT_S = 60.0
WAIT_PER_TUNNEL_S = 0.5
WAIT_MAX_S = 3600.0


def _default_request(op: str, args: dict[str, Any], timeout: float | None) -> Any:
    return client.request(op, args, timeout=timeout)


def wait_timeout(cmd: Command) -> float:
    count = len(cmd.numlist or ()) + len(cmd.namelist or ())
    return min(WAIT_MAX_S, WAIT_TIMEOUT_S + WAIT_PER_TUNNEL_S * count)


def to_request(cmd: Command) -> tuple[str, dict[str, Any]]:
    """The control request for a parsed command (grammar has already refused what the manual forbids)."""
    if cmd.cmd == "activate":
        args: dict[str, Any] = {"phase": cmd.phase, "wait": cmd.wait}
        if cmd.autostart:
            args["autostart"] = True
        if cmd.numlist is not None:
            args["numlist"] = list(cmd.numlist)
        if cmd.namelist is not None:
            args["namelist"] = list(cmd.namelist)
        if cmd.remid is not None:
            args["remid"] = cmd.remid
        if cmd.ipaddr is not None:
            args["ipaddr"] = list(cmd.ipaddr)
        if cmd.wait:
            # Each negotiation ends on its own (established, refused or retransmissions exhausted);
            # the limit only guards against a daemon that never answers, so it grows with the count.
            args["timeout"] = wait_timeout(cmd)
        return "activate", args
    if cmd.cmd == "list":
        return "list", {
            "phase": cmd.phase or "1+",
            "numlist": list(cmd.numlist) if cmd.numlist is not None else None,
            "role": cmd.role,
        }
    if cmd.cmd == "remove":
        # The manual: without numlist every tunnel is deactivated; `all` says the same explicitly.
        return "remove", {
            "phase": cmd.phase,
            "numlist": list(cmd.numlist) if cmd.numlist is not None else None,
        }
    if cmd.cmd == "log":
        return "log", {}
    raise ValueError(f"cmd={cmd.cmd} is not a daemon command")


def run(cmd: Command, request: Requester | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    req = request or _default_request
    if cmd.db:
        print("ike: the db flag is handled by the database half of ike, not the daemon", file=err)
        return EXIT_FAILED
    if cmd.cmd == "activate" and not (cmd.autostart or cmd.numlist or cmd.namelist or cmd.remid or cmd.ipaddr):
        print(
            "ike: say which tunnels to activate: numlist=, namelist= (with phase=), remid=, ipaddr= or autostart\n"
            "  ike cmd=activate [phase=1|2] [numlist=tunnel_num_list] [remid=remote_id] "
            "[ipaddr=src_addr,dst_addr] [autostart]",
            file=err,
        )
        return EXIT_FAILED
    op, args = to_request(cmd)
    timeout = wait_timeout(cmd) + 15 if cmd.wait else 120.0
    try:
        result = req(op, args, timeout)
    except client.NotRoot as e:
        print(e, file=err)
        return EXIT_NOT_ROOT
    except client.DaemonNotRunning as e:
        print(e, file=err)
        return EXIT_NOT_RUNNING
    except client.ClientError as e:
        print(e, file=err)
        return EXIT_FAILED
    if cmd.format == "json":
        import json  # only for format=json: its import costs every other command start-up time

        print(json.dumps(result, indent=2, sort_keys=True), file=out)
        return _status(op, result)
    if op == "activate":
        render_activate(result, out, waited=cmd.wait)
    elif op == "list":
        render_list(result, out, verbose=cmd.verbose)
        for n in result.get("missing", []):
            print(f"ike: no active phase {'2' if result.get('phase') == '2' else '1'} tunnel number {n}", file=err)
    elif op == "remove":
        render_remove(result, out)
    elif op == "log":
        print(f"iked: logging at level {result['level']} to {result['destination']} (from {result['conf']})", file=out)
    return _status(op, result)


def _status(op: str, result: Any) -> int:
    if op == "activate":
        rs = result.get("results", [])
        if any(r.get("status") == "failed" for r in rs):
            return EXIT_FAILED
        if "timed_out" in result and (result["timed_out"] or any(r.get("state") != "established" for r in rs)):
            return EXIT_FAILED
        return 0
    if op == "list" and result.get("missing"):
        return EXIT_FAILED
    return 0


# --- rendering -------------------------------------------------------------------------------------

STATUS = {
    "negotiating": "Negotiating",
    "established": "Active",
    "failed": "Failed",
    "deleted": "Deleted",
    "expired": "Expired",
    "deleting": "Deleting",
}
ROLE = {"i": "Initiator", "r": "Responder"}


def _label(r: dict[str, Any], phase: int) -> str:
    db = r.get("db")
    name = r.get("name")
    if db is None:
        return f"phase {phase} tunnel (no database entry)"
    return f"phase {phase} tunnel {name} (database tunnel {db})"


def render_activate(result: dict[str, Any], out: TextIO, waited: bool) -> None:
    for r in result.get("results", []):
        what = _label(r, r["phase"])
        active = f"active tunnel {r['tunnel']}" if r.get("tunnel") is not None else "no active tunnel"
        if r["status"] == "exists":
            line = f"{what}: already active as {active}"
        elif waited and "state" in r:
            state = r["state"]
            if state == "established":
                line = f"{what}: established as {active}"
            elif state == "negotiating":
                line = f"{what}: still negotiating as {active} after the wait; see ike cmd=list verbose"
            else:
                why = r.get("message") or "no reason given"
                if r.get("notify") and r["notify"] not in why:
                    why += f" (notify {r['notify']})"
                line = f"{what}: {STATUS.get(state, state).lower()} ({active}): {why}"
        elif r["status"] == "failed":
            line = f"{what}: failed: {r.get('message') or 'no reason given'}"
        else:
            line = f"{what}: negotiation started as {active}"
        print(line, file=out)
        for o in r.get("offered") or []:
            print(f"    we offered:   {o}", file=out)
        for o in r.get("peer_offered") or []:
            print(f"    peer offered: {o}", file=out)
    if not waited and any(r["status"] == "started" for r in result.get("results", [])):
        print("Use ike cmd=list to see whether the negotiation succeeded (or add wait).", file=out)


def render_remove(result: dict[str, Any], out: TextIO) -> None:
    removed = result.get("removed", [])
    if not removed:
        print("no active tunnels to remove", file=out)
    for r in removed:
        verb = "removed" if r["status"] == "removed" else "cleared from the list"
        print(f"phase {r['phase']} tunnel {r['tunnel']} {verb}", file=out)


_P1_HEAD = ("Phase", "Tun Id", "DB Id", "Status", "Role", "Local Addr/Id", "Remote Addr/Id")


def _row_p1(t: dict[str, Any]) -> tuple[str, ...]:
    local = t["local"] + (f" ({t['local_id']})" if t.get("local_id") and t["local_id"] != t["local"] else "")
    remote = t["remote"] + (f" ({t['remote_id']})" if t.get("remote_id") and t["remote_id"] != t["remote"] else "")
    return ("1", str(t["tunnel"]), _db(t), STATUS.get(t["state"], t["state"]), ROLE[t["role"]], local, remote)


def _row_p2(t: dict[str, Any]) -> tuple[str, ...]:
    return (
        "2",
        str(t["tunnel"]),
        _db(t),
        STATUS.get(t["state"], t["state"]),
        ROLE[t["role"]],
        ", ".join(t.get("local_ts") or []),
        ", ".join(t.get("remote_ts") or []),
    )


def _db(t: dict[str, Any]) -> str:
    return str(t["db"]) if t.get("db") is not None else "-"


def render_list(result: dict[str, Any], out: TextIO, verbose: bool) -> None:
    phase = result.get("phase", "1+")
    tunnels = result.get("tunnels", [])
    if not tunnels:
        print("No active tunnels." if not result.get("missing") else "No such active tunnels.", file=out)
        return
    if verbose:
        first = True
        for t in tunnels:
            if phase == "2":
                if t.get("phase1"):
                    _print_block(_p1_block(t["phase1"]), out, first)
                    first = False
                _print_block(_p2_block(t), out, first)
            elif t.get("phase") == 2:
                _print_block(_p2_block(t), out, first)
            else:
                _print_block(_p1_block(t), out, first)
                for c in t.get("phase2", []):
                    _print_block(_p2_block(c), out, False)
            first = False
        return
    rows: list[tuple[str, ...]] = []
    notes: dict[int, list[str]] = {}
    for t in tunnels:
        if phase == "2":
            if t.get("phase1"):
                rows.append(_row_p1(t["phase1"]))
            rows.append(_row_p2(t))
            _notes(t, notes, len(rows) - 1)
        elif t.get("phase") == 2:
            rows.append(_row_p2(t))
            _notes(t, notes, len(rows) - 1)
        else:
            rows.append(_row_p1(t))
            _notes(t, notes, len(rows) - 1)
            for c in t.get("phase2", []):
                rows.append(_row_p2(c))
                _notes(c, notes, len(rows) - 1)
    widths = [max(len(r[i]) for r in [_P1_HEAD, *rows]) for i in range(len(_P1_HEAD))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*_P1_HEAD).rstrip(), file=out)
    for i, r in enumerate(rows):
        print(fmt.format(*r).rstrip(), file=out)
        for n in notes.get(i, []):
            print(f"       {n}", file=out)
    print("(Tun Id: active tunnel number, for remove/list; DB Id: database tunnel number.)", file=out)


def _notes(t: dict[str, Any], notes: dict[int, list[str]], row: int) -> None:
    if t.get("last_error") and t.get("state") in ("failed", "deleted", "expired"):
        notes.setdefault(row, []).append(f"reason: {t['last_error']}")
        for o in t.get("offered") or []:
            notes[row].append(f"  we offered:   {o}")
        for o in t.get("peer_offered") or []:
            notes[row].append(f"  peer offered: {o}")


def _print_block(lines: list[tuple[str, str]], out: TextIO, first: bool) -> None:
    if not first:
        print(file=out)
    title, _ = lines[0]
    print(title, file=out)
    w = max(len(k) for k, _ in lines[1:]) if len(lines) > 1 else 0
    for k, v in lines[1:]:
        print(f"  {k + ':':<{w + 1}} {v}", file=out)


def _kb(t: dict[str, Any]) -> str:
    if not t.get("lifetime_kb"):
        return ""
    left = t.get("kb_left")
    return f", {t['lifetime_kb']} KB" + (f" ({left} KB left)" if isinstance(left, int) else "")


def _left(t: dict[str, Any]) -> str:
    total = t.get("lifetime_s") or 0
    left = t.get("lifetime_left_s")
    s = f"{total} s" if total else "none"
    if left is not None:
        s += f", {left} s left"
    return s


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _p1_block(t: dict[str, Any]) -> list[tuple[str, str]]:
    name = f" ({t['name']}, database tunnel {t['db']})" if t.get("db") is not None else ""
    lines = [
        (f"Phase 1 tunnel {t['tunnel']}{name}", ""),
        ("Status", STATUS.get(t["state"], t["state"])),
        ("Role", ROLE[t["role"]]),
        ("IKE version", f"IKEv{t['version']}" + (f", {t['mode']} mode" if t.get("mode") else "")),
        ("Local", f"{t['local']}:{t['local_port']}  ID {t.get('local_id') or '-'}"),
        ("Remote", f"{t['remote']}:{t['remote_port']}  ID {t.get('remote_id') or '-'}"),
        ("Authentication", t.get("auth") or "-"),
        ("Algorithms", t.get("proposal") or "-"),
        ("SPIs", f"initiator {t['spi_i']}  responder {t['spi_r']}" if t.get("spi_i") else "-"),
        ("Lifetime", _left(t)),
        ("Established", _when(t.get("established"))),
        ("NAT", t.get("nat") or "none"),
        ("Rekeys", str(t.get("rekeys", 0))),
        ("Phase 2 tunnels", ", ".join(map(str, t.get("phase2_tunnels") or [])) or "none"),
        ("Last error", t.get("last_error") or "-"),
    ]
    if t.get("notify"):
        lines.append(("Notify", t["notify"]))
    for o in t.get("offered") or []:
        lines.append(("We offered", o))
    for o in t.get("peer_offered") or []:
        lines.append(("Peer offered", o))
    return lines


def _p2_block(t: dict[str, Any]) -> list[tuple[str, str]]:
    name = f" ({t['name']}, database tunnel {t['db']})" if t.get("db") is not None else ""
    pfs = f"group {t['pfs_group']}" if t.get("pfs_group") else "none"
    lines = [
        (f"Phase 2 tunnel {t['tunnel']}{name}", ""),
        ("Status", STATUS.get(t["state"], t["state"])),
        ("Role", ROLE[t["role"]]),
        ("Phase 1 tunnel", str(t["phase1_tunnel"]) if t.get("phase1_tunnel") is not None else "-"),
        ("Protocol", f"{(t.get('protocol') or '-').upper()} {t.get('mode') or ''}".strip()),
        ("Local", ", ".join(t.get("local_ts") or []) or "-"),
        ("Remote", ", ".join(t.get("remote_ts") or []) or "-"),
        ("Endpoints", f"{t['local']} <-> {t['remote']}" if t.get("local") else "-"),
        ("Algorithms", t.get("proposal") or "-"),
        ("PFS", pfs),
        ("SPIs", f"in {t['spi_in']}  out {t['spi_out']}" if t.get("spi_in") else "-"),
        ("Lifetime", _left(t) + _kb(t)),
        ("Established", _when(t.get("established"))),
        ("UDP encapsulation", "yes (NAT-T)" if t.get("udp_encap") else "no"),
        ("Refreshed", "yes" if t.get("refresh", True) else "no (its phase 1 was removed)"),
        ("Rekeys", str(t.get("rekeys", 0))),
    ]
    traffic = [(k, t[k]) for k in ("bytes_in", "bytes_out", "packets_in", "packets_out") if k in t]
    if traffic:
        lines.append(("Traffic", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in traffic)))
    else:
        lines.append(("Traffic", "no counters (data plane none)" if t.get("state") == "established" else "-"))
    lines.append(("Last error", t.get("last_error") or "-"))
    if t.get("notify"):
        lines.append(("Notify", t["notify"]))
    for o in t.get("offered") or []:
        lines.append(("We offered", o))
    for o in t.get("peer_offered") or []:
        lines.append(("Peer offered", o))
    return lines
