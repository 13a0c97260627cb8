"""`ike cmd=list db` and `ike cmd=remove db`: the half of `ike` that needs no daemon.

This path must start fast, so it imports only the store (sqlite3) and the policy model: never
`cryptography`, XML or the transforms table (tests check it with `python -X importtime`).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ike.cli.grammar import Command
from ike.db.model import StoreError
from ike.db.store import NoDatabase, Store
from ike.policy import Phase1Tunnel, Phase2Tunnel, TrafficSelector

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

Entry = tuple[int, Phase1Tunnel | Phase2Tunnel]


def run_db(command: Command, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        # Listing or removing needs tunnels: a missing file is an error, not a new empty database.
        store = Store(create=False)
    except NoDatabase as e:
        print(f"ike: {e}", file=err)
        return EXIT_FAIL
    except Exception as e:  # unreadable file, not a database, newer schema: say so, never a traceback
        print(f"ike: cannot open the tunnel-definition database: {e}", file=err)
        return EXIT_FAIL
    try:
        if command.cmd == "list":
            return _list(store, command, out, err)
        if command.cmd == "remove":
            return _remove(store, command, out, err)
        print(f"ike: cmd={command.cmd} does not take db", file=err)
        return EXIT_USAGE
    finally:
        store.close()


# ---------------------------------------------------------------- list


def select(store: Store, phase: str, numlist: tuple[int, ...] | None) -> tuple[list[Entry], list[int]]:
    """The entries to show, in order, and the requested numbers that do not exist.
    phase 1: phase 1 tunnels; 1+: each phase 1 followed by its phase 2 tunnels; 2: the phase 2
    tunnels, each group preceded by the phase 1 tunnel it runs under."""
    with store.snapshot():  # one state of the file, or a writer in between leaves p2 rows without p1
        p1 = store.phase1_tunnels()
        p2 = store.phase2_tunnels()
    by_number = {t.number: t for t in p1}
    under: dict[int, list[Phase2Tunnel]] = {}
    for t2 in p2:
        under.setdefault(t2.phase1, []).append(t2)
    wanted = set(numlist) if numlist is not None else None
    entries: list[Entry] = []
    if phase in ("1", "1+"):
        chosen = [t for t in p1 if wanted is None or t.number in wanted]
        missing = sorted(wanted - {t.number for t in p1}) if wanted is not None else []
        for t1 in chosen:
            entries.append((1, t1))
            if phase == "1+":
                entries += [(2, t2) for t2 in under.get(t1.number, [])]
    else:
        chosen2 = [t for t in p2 if wanted is None or t.number in wanted]
        missing = sorted(wanted - {t.number for t in p2}) if wanted is not None else []
        groups: dict[int, list[Phase2Tunnel]] = {}
        for t2 in chosen2:
            groups.setdefault(t2.phase1, []).append(t2)
        for n1 in sorted(groups):
            entries.append((1, by_number[n1]))
            entries += [(2, t2) for t2 in groups[n1]]
    return entries, missing


def _list(store: Store, command: Command, out: TextIO, err: TextIO) -> int:
    phase = command.phase or "1+"  # the manual: "The default phase value is 1+."
    entries, missing = select(store, phase, command.numlist)
    if command.format == "json":
        doc = {
            "source": "db",
            "phase": phase,
            "tunnels": [entry_json(p, t, command.verbose) for p, t in entries],
            "missing": missing,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif command.verbose:
        out.write("\n".join(verbose_text(p, t) for p, t in entries))
        if entries:
            out.write("\n")
    else:
        out.write(concise_text(entries))
    if not entries and not missing and command.format == "text":
        print("ike: no tunnels in the database (add some with `ikedb put FILE`)", file=err)
    if missing:
        which = "phase 2" if phase == "2" else "phase 1"
        print(
            f"ike: no {which} tunnel numbered {', '.join(map(str, missing))} in the database",
            file=err,
        )
        return EXIT_FAIL
    return EXIT_OK


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _ts_json(ts: TrafficSelector) -> dict[str, Any]:
    return {
        "text": ts.address_text(),
        "start": str(ts.start),
        "end": str(ts.end),
        "protocol": ts.protocol,
        "port_start": ts.port_start,
        "port_end": ts.port_end,
    }


def entry_json(phase: int, t: Phase1Tunnel | Phase2Tunnel, verbose: bool) -> dict[str, Any]:
    if isinstance(t, Phase1Tunnel):
        d: dict[str, Any] = {
            "phase": 1,
            "number": t.number,
            "name": t.name,
            "local_id": {"type": t.local_id.type.label, "value": t.local_id.value},
            "remote_id": {"type": t.remote_id.type.label, "value": t.remote_id.value},
            "policy": t.policy.name,
            "autostart": t.autostart,
        }
        if verbose:
            p = t.policy
            c = t.credentials
            d |= {
                "local_addr": t.local_addr,
                "remote_addr": t.remote_addr,
                "policy": {
                    "name": p.name,
                    "ike_version": p.version,
                    "mode": p.mode,
                    "auth": p.auth.value,
                    "proposals": [
                        {"encr": x.encr, "encr_keylen": x.encr_keylen, "integ": x.integ, "prf": x.prf, "dh": x.dh}
                        for x in p.proposals
                    ],
                    "lifetime_s": p.lifetime_s,
                    "lifetime_kb": p.lifetime_kb,
                    "dpd_delay_s": p.dpd_delay_s,
                    "dpd_action": p.dpd_action.value,
                },
                # Whether a key is set, never the key.
                "credentials": {
                    "psk_set": c.psk is not None,
                    "cert_file": c.cert_file,
                    "key_file": c.key_file,
                    "ca_file": c.ca_file,
                },
            }
        return d
    d = {
        "phase": 2,
        "number": t.number,
        "name": t.name,
        "phase1": t.phase1,
        "local_id": t.local_ts.address_text() if not verbose else _ts_json(t.local_ts),
        "remote_id": t.remote_ts.address_text() if not verbose else _ts_json(t.remote_ts),
        "policy": t.policy.name,
        "autostart": t.autostart,
    }
    if verbose:
        p2 = t.policy
        d["policy"] = {
            "name": p2.name,
            "protocol": p2.protocol,
            "mode": p2.mode,
            "pfs_group": p2.pfs_group,
            "proposals": [
                {"encr": x.encr, "encr_keylen": x.encr_keylen, "integ": x.integ, "esn": x.esn} for x in p2.proposals
            ],
            "lifetime_s": p2.lifetime_s,
            "lifetime_kb": p2.lifetime_kb,
        }
    return d


HEADER = ("Phase", "Tun#", "Name", "Local ID", "Remote ID", "Policy", "Auto")


def concise_text(entries: list[Entry]) -> str:
    rows: list[tuple[str, ...]] = []
    for _phase, t in entries:
        if isinstance(t, Phase1Tunnel):
            rows.append(
                ("1", str(t.number), t.name, str(t.local_id), str(t.remote_id), t.policy.name, _yes(t.autostart))
            )
        else:
            rows.append(
                ("2", str(t.number), t.name, str(t.local_ts), str(t.remote_ts), t.policy.name, _yes(t.autostart))
            )
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [HEADER, *rows]]
    return "\n".join(lines) + "\n"


def verbose_text(phase: int, t: Phase1Tunnel | Phase2Tunnel) -> str:
    def row(label: str, value: object, indent: int = 2) -> str:
        return f"{' ' * indent}{label + ':':<{24 - indent}}{value}"

    if isinstance(t, Phase1Tunnel):
        p = t.policy
        c = t.credentials
        if c.cert_file:
            auth = f"{p.auth.value} signature, certificate {c.cert_file}, key {c.key_file}, CA {c.ca_file or '-'}"
        else:
            auth = f"pre-shared key ({'set' if c.psk is not None else 'NOT SET: add an IKEPresharedKey'})"
        lines = [
            f"Phase 1 tunnel {t.number}: {t.name}",
            row("Local ID", f"{t.local_id} ({t.local_id.type.label})"),
            row("Remote ID", f"{t.remote_id} ({t.remote_id.type.label})"),
            row("Local address", t.local_addr or "any"),
            row("Remote address", t.remote_addr),
            row("Autostart", _yes(t.autostart)),
            row("Policy", p.name),
            row("IKE version", f"IKEv{p.version}" + (f", {p.mode} mode" if p.version == 1 else ""), 4),
            row("Authentication", auth, 4),
        ]
        lines += [row(f"Proposal {i + 1}", x, 4) for i, x in enumerate(p.proposals)]
        life = f"{p.lifetime_s} s" + (f", {p.lifetime_kb} KB" if p.lifetime_kb else "")
        lines += [
            row("Lifetime", life, 4),
            row("DPD", f"every {p.dpd_delay_s} s, then {p.dpd_action.value}" if p.dpd_delay_s else "off", 4),
        ]
        return "\n".join(lines)
    p2 = t.policy
    lines = [
        f"Phase 2 tunnel {t.number}: {t.name} (under phase 1 tunnel {t.phase1})",
        row("Local ID", t.local_ts),
        row("Remote ID", t.remote_ts),
        row("Autostart", _yes(t.autostart)),
        row("Policy", p2.name),
        row("Protocol", f"{p2.protocol.upper()}, {p2.mode} mode", 4),
    ]
    lines += [row(f"Proposal {i + 1}", x if p2.protocol == "esp" else x.integ, 4) for i, x in enumerate(p2.proposals)]
    lines += [
        row("PFS", f"DH group {p2.pfs_group}" if p2.pfs_group else "none", 4),
        row("Lifetime", f"{p2.lifetime_s} s" + (f", {p2.lifetime_kb} KB" if p2.lifetime_kb else ""), 4),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- remove


def _remove(store: Store, command: Command, out: TextIO, err: TextIO) -> int:
    if command.phase is None and command.numlist is not None:
        print(
            "ike: cmd=remove db with numlist needs phase=1 or phase=2: database tunnel numbers are "
            "counted separately for each phase",
            file=err,
        )
        return EXIT_USAGE
    try:
        if command.phase is None:
            # The manual: "When numlist is omitted, all tunnels are ... removed from the database."
            removed = store.remove_all_tunnels()
        else:
            phase = int(command.phase)
            removed = [(phase, n, name) for n, name in store.remove_tunnels(phase, command.numlist)]
    except StoreError as e:
        print(f"ike: {e}", file=err)
        return EXIT_FAIL
    if command.format == "json":
        out.write(
            json.dumps({"removed": [{"phase": p, "number": n, "name": nm} for p, n, nm in removed]}, indent=2) + "\n"
        )
    elif removed:
        for p, n, nm in removed:
            out.write(f"removed phase {p} tunnel {n} ({nm}) from the database\n")
    else:
        out.write("nothing to remove: no such tunnels in the database\n")
    return EXIT_OK
