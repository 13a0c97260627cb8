"""The tunnel-definition database: one SQLite file, mode 0600.

Every write is one `BEGIN IMMEDIATE` transaction that first checks everything and then writes, so a
refused write changes nothing and two writers serialise on SQLite's lock instead of losing entries.
Every read that takes more than one SELECT runs in one read transaction (`snapshot()`), and the file
is in WAL mode: a reader sees one committed state from start to end, never a phase 2 tunnel whose
phase 1 tunnel a concurrent writer added after the reader's first SELECT, and readers (the daemon,
`ike cmd=list db`) neither wait for writers nor make them wait.
This module imports no crypto and no XML: `ike cmd=list db` goes through it and must start fast.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ike import paths
from ike.db.model import (
    DM_POLICY,
    GROUP,
    KM_POLICY,
    PHASE1,
    PHASE2,
    PSK,
    Definitions,
    Phase1Spec,
    Phase2Spec,
    PresharedKey,
    StoreError,
)
from ike.db.schema import migrate
from ike.policy import (
    AuthMethod,
    Credentials,
    DataManagementPolicy,
    DpdAction,
    EspProposal,
    Group,
    Identity,
    IdType,
    IkeProposal,
    KeyManagementPolicy,
    Phase1Tunnel,
    Phase2Tunnel,
    TrafficSelector,
)

BUSY_TIMEOUT_S = 30.0

Problems = list[tuple[tuple[str, str], str]]


class NoDatabase(Exception):
    """Store(create=False) found no file: most likely a mistyped IKE_DB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        hint = ", or check IKE_DB, which names this path" if os.environ.get("IKE_DB") else ""
        super().__init__(f"no tunnel database at {path}; define tunnels with ikedb put FILE{hint}")


class Store:
    def __init__(self, path: Path | None = None, create: bool = True) -> None:
        """Open the database at `path` (default: IKE_DB). `create=False` is for commands that only
        read or remove: a missing file raises NoDatabase instead of leaving an empty database
        (and its directories) wherever a mistyped IKE_DB points."""
        self.path = Path(path) if path is not None else paths.db_path()
        parent = self.path.parent
        if create and not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file ourselves so it is never, even briefly, readable by others: it holds keys.
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            raise NoDatabase(self.path) from None
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        target: str | Path = self.path
        if not create:
            # mode=rw: should the file vanish after the check above, SQLite must not create it either.
            quoted = str(self.path.absolute()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
            target = f"file:{quoted}?mode=rw"
        try:
            self._conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=not create)
        except sqlite3.OperationalError:
            if not create and not self.path.exists():
                raise NoDatabase(self.path) from None
            raise
        self._conn.execute("PRAGMA foreign_keys = ON")
        migrate(self._conn)
        # Persistent in the file: switched once, then every later open finds it set. SQLite gives
        # the -wal and -shm files the database file's mode, so they are 0600 too.
        if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._conn.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the same committed state of the file, whatever other processes
        write meanwhile. Nests, and inside a write it is that write's own transaction."""
        if self._conn.in_transaction:
            yield
            return
        # Deferred: the snapshot starts at the first SELECT and takes no write lock.
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # ---------------------------------------------------------------- reading

    def _q(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        cur = self._conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, tuple(args)).fetchall()

    def km_policies(self) -> list[KeyManagementPolicy]:
        with self.snapshot():
            return [self._km(r) for r in self._q("SELECT * FROM km_policy ORDER BY name")]

    def dm_policies(self) -> list[DataManagementPolicy]:
        with self.snapshot():
            return [self._dm(r) for r in self._q("SELECT * FROM dm_policy ORDER BY name")]

    def _km(self, r: sqlite3.Row) -> KeyManagementPolicy:
        props = tuple(
            IkeProposal(p["encr"], p["encr_keylen"], p["integ"], p["prf"], p["dh"])
            for p in self._q("SELECT * FROM km_proposal WHERE policy_id = ? ORDER BY seq", (r["id"],))
        )
        return KeyManagementPolicy(
            name=r["name"],
            version=r["version"],
            mode=r["mode"],
            proposals=props,
            lifetime_s=r["lifetime_s"],
            lifetime_kb=r["lifetime_kb"],
            auth=AuthMethod(r["auth"]),
            dpd_delay_s=r["dpd_delay_s"],
            dpd_action=DpdAction(r["dpd_action"]),
        )

    def _dm(self, r: sqlite3.Row) -> DataManagementPolicy:
        props = tuple(
            EspProposal(p["encr"], p["encr_keylen"], p["integ"], bool(p["esn"]))
            for p in self._q("SELECT * FROM dm_proposal WHERE policy_id = ? ORDER BY seq", (r["id"],))
        )
        return DataManagementPolicy(
            name=r["name"],
            protocol=r["protocol"],
            proposals=props,
            pfs_group=r["pfs_group"],
            lifetime_s=r["lifetime_s"],
            lifetime_kb=r["lifetime_kb"],
            mode=r["mode"],
        )

    def _psk_map(self) -> dict[tuple[str, str], bytes]:
        return {(r["id_type"], r["id_value"]): bytes(r["key"]) for r in self._q("SELECT * FROM psk")}

    def _phase1_rows(self, where: str = "", args: Iterable[Any] = ()) -> list[Phase1Tunnel]:
        with self.snapshot():
            return self._phase1_rows_in(where, args)

    def _phase1_rows_in(self, where: str, args: Iterable[Any]) -> list[Phase1Tunnel]:
        rows = self._q(f"SELECT * FROM phase1 {where} ORDER BY number", args)  # noqa: S608 (names are constants here)
        if not rows:
            return []
        kms = {r["id"]: self._km(r) for r in self._q("SELECT * FROM km_policy")}
        psks = self._psk_map()
        out = []
        for r in rows:
            remote = Identity(IdType.from_label(r["remote_id_type"]), r["remote_id"])
            out.append(
                Phase1Tunnel(
                    number=r["number"],
                    name=r["name"],
                    local_id=Identity(IdType.from_label(r["local_id_type"]), r["local_id"]),
                    remote_id=remote,
                    local_addr=r["local_addr"],
                    remote_addr=r["remote_addr"],
                    policy=kms[r["policy_id"]],
                    credentials=Credentials(
                        psk=psks.get((r["remote_id_type"], r["remote_id"])),
                        cert_file=r["cert_file"],
                        key_file=r["key_file"],
                        ca_file=r["ca_file"],
                    ),
                    autostart=bool(r["autostart"]),
                )
            )
        return out

    def _phase2_rows(self, where: str = "", args: Iterable[Any] = ()) -> list[Phase2Tunnel]:
        with self.snapshot():
            return self._phase2_rows_in(where, args)

    def _phase2_rows_in(self, where: str, args: Iterable[Any]) -> list[Phase2Tunnel]:
        rows = self._q(f"SELECT * FROM phase2 {where} ORDER BY number", args)  # noqa: S608 (names are constants here)
        if not rows:
            return []
        dms = {r["id"]: self._dm(r) for r in self._q("SELECT * FROM dm_policy")}
        return [
            Phase2Tunnel(
                number=r["number"],
                name=r["name"],
                phase1=r["phase1"],
                local_ts=_ts(r, "local"),
                remote_ts=_ts(r, "remote"),
                policy=dms[r["policy_id"]],
                autostart=bool(r["autostart"]),
            )
            for r in rows
        ]

    def phase1_tunnels(self) -> list[Phase1Tunnel]:
        return self._phase1_rows()

    def phase2_tunnels(self) -> list[Phase2Tunnel]:
        return self._phase2_rows()

    def phase1(self, number: int) -> Phase1Tunnel | None:
        found = self._phase1_rows("WHERE number = ?", (number,))
        return found[0] if found else None

    def phase2(self, number: int) -> Phase2Tunnel | None:
        found = self._phase2_rows("WHERE number = ?", (number,))
        return found[0] if found else None

    def phase1_by_name(self, name: str) -> Phase1Tunnel | None:
        found = self._phase1_rows("WHERE name = ?", (name,))
        return found[0] if found else None

    def phase2_by_name(self, name: str) -> Phase2Tunnel | None:
        found = self._phase2_rows("WHERE name = ?", (name,))
        return found[0] if found else None

    def groups(self) -> list[Group]:
        out = []
        with self.snapshot():
            for g in self._q("SELECT * FROM ike_group ORDER BY name"):
                members = tuple(
                    m["member"]
                    for m in self._q("SELECT member FROM ike_group_member WHERE group_id = ? ORDER BY seq", (g["id"],))
                )
                out.append(Group(g["name"], members))
        return out

    def preshared_keys(self) -> list[PresharedKey]:
        return [
            PresharedKey(Identity(IdType.from_label(r["id_type"]), r["id_value"]), bytes(r["key"]))
            for r in self._q("SELECT * FROM psk ORDER BY id_type, id_value")
        ]

    def definitions(self) -> Definitions:
        """Everything, in the form put() takes: put(definitions()) into an empty file copies the database."""
        with self.snapshot():
            p1 = self.phase1_tunnels()
            names = {t.number: t.name for t in p1}
            return Definitions(
                km_policies=self.km_policies(),
                dm_policies=self.dm_policies(),
                phase1=[spec_of_phase1(t) for t in p1],
                phase2=[spec_of_phase2(t, names[t.phase1]) for t in self.phase2_tunnels()],
                groups=self.groups(),
                psks=self.preshared_keys(),
            )

    # ---------------------------------------------------------------- writing

    def put(self, defs: Definitions, force: bool = False) -> None:
        """Write all of `defs` in one transaction, or nothing (StoreError lists every problem).
        Existing entries with the same name (PSKs: the same identity) are refused unless `force`,
        which overwrites them in place; overwritten tunnels keep their numbers."""
        from ike.db.validate import check_definitions, check_phase2_against_phase1

        problems: Problems = check_definitions(defs)
        if problems:
            raise StoreError(problems)
        with self._write() as c:
            problems = self._check_put(c, defs, force)
            if problems:
                raise StoreError(problems)
            km_ids = {p.name: self._upsert_km(c, p) for p in defs.km_policies}
            dm_ids = {p.name: self._upsert_dm(c, p) for p in defs.dm_policies}
            km_ids.update({r[1]: r[0] for r in c.execute("SELECT id, name FROM km_policy")})
            dm_ids.update({r[1]: r[0] for r in c.execute("SELECT id, name FROM dm_policy")})
            for t1 in defs.phase1:
                self._upsert_phase1(c, t1, km_ids[t1.policy])
            p1 = {r[1]: (r[0], r[2]) for r in c.execute("SELECT number, name, policy_id FROM phase1")}
            for t2 in defs.phase2:
                self._upsert_phase2(c, t2, p1[t2.phase1][0], dm_ids[t2.policy])
            for g in defs.groups:
                c.execute("DELETE FROM ike_group WHERE name = ?", (g.name,))
                gid = c.execute("INSERT INTO ike_group (name) VALUES (?)", (g.name,)).lastrowid
                c.executemany(
                    "INSERT INTO ike_group_member VALUES (?, ?, ?)", [(gid, i, m) for i, m in enumerate(g.members)]
                )
            for k in defs.psks:
                c.execute(
                    "INSERT OR REPLACE INTO psk VALUES (?, ?, ?)", (k.identity.type.label, k.identity.value, k.key)
                )
            # An overwritten policy can break tunnels that are not in this batch: check them all.
            problems = self._check_consistency(check_phase2_against_phase1, defs)
            if problems:
                raise StoreError(problems)

    def _check_consistency(
        self, check: Callable[[DataManagementPolicy, int], str | None], defs: Definitions
    ) -> Problems:
        """Problems of every stored tunnel after this batch's writes. A tunnel that is not in the
        batch is broken by something that is: the problem is filed under that entry (so put reports
        the line that caused it) and names the tunnel as one in the database."""
        problems: Problems = []
        in_batch = {
            KM_POLICY: {p.name for p in defs.km_policies},
            DM_POLICY: {p.name for p in defs.dm_policies},
            PHASE1: {t.name for t in defs.phase1},
            PHASE2: {t.name for t in defs.phase2},
        }

        def file_under(kind: str, name: str, causes: list[tuple[str, str]], msg: str) -> None:
            if name in in_batch[kind]:
                problems.append(((kind, name), msg))
                return
            cause = next((c for c in causes if c[1] in in_batch[c[0]]), (kind, name))
            problems.append(
                (
                    cause,
                    f"this change breaks {kind} {name!r} (in the database, not in this file): {msg}; "
                    f"put {kind} {name!r} in the same file, changed to fit, or leave this change out",
                )
            )

        verdicts: dict[tuple[int, int], str | None] = {}
        rows = self._q(
            "SELECT t.name, t.policy_id, k.version, d.name AS dm, p.name AS p1, k.name AS km FROM phase2 t"
            " JOIN phase1 p ON p.number = t.phase1 JOIN km_policy k ON k.id = p.policy_id"
            " JOIN dm_policy d ON d.id = t.policy_id"
        )
        dms = {r["id"]: self._dm(r) for r in self._q("SELECT * FROM dm_policy")} if rows else {}
        for r in rows:
            key = (r["policy_id"], r["version"])
            if key not in verdicts:
                verdicts[key] = check(dms[r["policy_id"]], r["version"])
            if verdicts[key]:
                causes = [(DM_POLICY, r["dm"]), (PHASE1, r["p1"]), (KM_POLICY, r["km"])]
                file_under(PHASE2, r["name"], causes, str(verdicts[key]))
        for r in self._q(
            "SELECT t.name, k.name AS policy, k.auth FROM phase1 t JOIN km_policy k ON k.id = t.policy_id"
            " WHERE k.auth != 'psk' AND t.cert_file IS NULL"
        ):
            file_under(
                PHASE1,
                r["name"],
                [(KM_POLICY, r["policy"])],
                f"IKEProtection {r['policy']!r} authenticates with {r['auth']} signatures: give "
                "IKE_CertificateFile, IKE_PrivateKeyFile and IKE_CAFile",
            )
        return problems

    def _check_put(self, c: sqlite3.Connection, defs: Definitions, force: bool) -> Problems:
        problems: Problems = []

        def names(sql: str) -> set[str]:
            return {r[0] for r in c.execute(sql)}

        existing = {
            KM_POLICY: names("SELECT name FROM km_policy"),
            DM_POLICY: names("SELECT name FROM dm_policy"),
            PHASE1: names("SELECT name FROM phase1"),
            PHASE2: names("SELECT name FROM phase2"),
            GROUP: names("SELECT name FROM ike_group"),
            PSK: {f"{r[0]}:{r[1]}" for r in c.execute("SELECT id_type, id_value FROM psk")},
        }
        batch: dict[str, list[str]] = {
            KM_POLICY: [p.name for p in defs.km_policies],
            DM_POLICY: [p.name for p in defs.dm_policies],
            PHASE1: [t.name for t in defs.phase1],
            PHASE2: [t.name for t in defs.phase2],
            GROUP: [g.name for g in defs.groups],
            PSK: [f"{k.identity.type.label}:{k.identity.value}" for k in defs.psks],
        }
        if not force:
            for kind, items in batch.items():
                for name in items:
                    if name in existing[kind]:
                        problems.append(((kind, name), "already in the database; use -F to overwrite it"))
        km_known = existing[KM_POLICY] | set(batch[KM_POLICY])
        dm_known = existing[DM_POLICY] | set(batch[DM_POLICY])
        p1_known = existing[PHASE1] | set(batch[PHASE1])
        for t1 in defs.phase1:
            if t1.policy not in km_known:
                problems.append(
                    ((PHASE1, t1.name), f"IKEProtection {t1.policy!r} is neither in the file nor in the database")
                )
        for t2 in defs.phase2:
            if t2.policy not in dm_known:
                problems.append(
                    ((PHASE2, t2.name), f"IPSecProtection {t2.policy!r} is neither in the file nor in the database")
                )
            if t2.phase1 not in p1_known:
                problems.append(
                    ((PHASE2, t2.name), f"IKETunnel {t2.phase1!r} is neither in the file nor in the database")
                )
        problems += self._check_numbers(c, "phase1", PHASE1, [(t.name, t.number) for t in defs.phase1])
        problems += self._check_numbers(c, "phase2", PHASE2, [(t.name, t.number) for t in defs.phase2])
        return problems

    @staticmethod
    def _check_numbers(c: sqlite3.Connection, table: str, kind: str, wanted: list[tuple[str, int | None]]) -> Problems:
        owners = {r[0]: r[1] for r in c.execute(f"SELECT number, name FROM {table}")}  # noqa: S608 (names are constants here)
        problems: Problems = []
        for name, number in wanted:
            if number is not None and owners.get(number, name) != name:
                problems.append(((kind, name), f"tunnel number {number} belongs to {kind} {owners[number]!r}"))
        return problems

    @staticmethod
    def _upsert_km(c: sqlite3.Connection, p: KeyManagementPolicy) -> int:
        vals = (p.version, p.mode, p.lifetime_s, p.lifetime_kb, p.auth.value, p.dpd_delay_s, p.dpd_action.value)
        row = c.execute("SELECT id FROM km_policy WHERE name = ?", (p.name,)).fetchone()
        if row:
            pid = int(row[0])
            c.execute(
                "UPDATE km_policy SET version=?, mode=?, lifetime_s=?, lifetime_kb=?, auth=?, dpd_delay_s=?,"
                " dpd_action=? WHERE id=?",
                (*vals, pid),
            )
            c.execute("DELETE FROM km_proposal WHERE policy_id = ?", (pid,))
        else:
            pid = int(
                c.execute("INSERT INTO km_policy VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)", (p.name, *vals)).lastrowid or 0
            )
        c.executemany(
            "INSERT INTO km_proposal VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(pid, i, x.encr, x.encr_keylen, x.integ, x.prf, x.dh) for i, x in enumerate(p.proposals)],
        )
        return pid

    @staticmethod
    def _upsert_dm(c: sqlite3.Connection, p: DataManagementPolicy) -> int:
        vals = (p.protocol, p.pfs_group, p.lifetime_s, p.lifetime_kb, p.mode)
        row = c.execute("SELECT id FROM dm_policy WHERE name = ?", (p.name,)).fetchone()
        if row:
            pid = int(row[0])
            c.execute(
                "UPDATE dm_policy SET protocol=?, pfs_group=?, lifetime_s=?, lifetime_kb=?, mode=? WHERE id=?",
                (*vals, pid),
            )
            c.execute("DELETE FROM dm_proposal WHERE policy_id = ?", (pid,))
        else:
            pid = int(
                c.execute("INSERT INTO dm_policy VALUES (NULL, ?, ?, ?, ?, ?, ?)", (p.name, *vals)).lastrowid or 0
            )
        c.executemany(
            "INSERT INTO dm_proposal VALUES (?, ?, ?, ?, ?, ?)",
            [(pid, i, x.encr, x.encr_keylen, x.integ, int(x.esn)) for i, x in enumerate(p.proposals)],
        )
        return pid

    @staticmethod
    def _upsert_phase1(c: sqlite3.Connection, t: Phase1Spec, policy_id: int) -> None:
        cols = {
            "name": t.name,
            "local_id_type": t.local_id.type.label,
            "local_id": t.local_id.value,
            "remote_id_type": t.remote_id.type.label,
            "remote_id": t.remote_id.value,
            "local_addr": t.local_addr,
            "remote_addr": t.remote_addr,
            "policy_id": policy_id,
            "cert_file": t.cert_file,
            "key_file": t.key_file,
            "ca_file": t.ca_file,
            "autostart": int(t.autostart),
        }
        _upsert_tunnel(c, "phase1", t.name, t.number, cols)

    @staticmethod
    def _upsert_phase2(c: sqlite3.Connection, t: Phase2Spec, phase1: int, policy_id: int) -> None:
        cols: dict[str, Any] = {"name": t.name, "phase1": phase1, "policy_id": policy_id, "autostart": int(t.autostart)}
        for side, ts in (("local", t.local_ts), ("remote", t.remote_ts)):
            cols.update(
                {
                    f"{side}_start": str(ts.start),
                    f"{side}_end": str(ts.end),
                    f"{side}_proto": ts.protocol,
                    f"{side}_port_start": ts.port_start,
                    f"{side}_port_end": ts.port_end,
                }
            )
        _upsert_tunnel(c, "phase2", t.name, t.number, cols)

    def remove_tunnels(self, phase: int, numbers: Iterable[int] | None) -> list[tuple[int, str]]:
        """Remove phase `phase` tunnels (all when `numbers` is None); returns (number, name) removed.
        Refuses (StoreError, nothing removed) numbers that do not exist and phase 1 tunnels that
        phase 2 tunnels not removed with them still run under."""
        table, kind = ("phase1", PHASE1) if phase == 1 else ("phase2", PHASE2)
        with self._write() as c:
            present = {r[0]: r[1] for r in c.execute(f"SELECT number, name FROM {table}")}  # noqa: S608 (names are constants here)
            wanted = sorted(present) if numbers is None else sorted(set(numbers))
            missing = [n for n in wanted if n not in present]
            if missing:
                raise StoreError(
                    [
                        (
                            (kind, ""),
                            f"no phase {phase} tunnel numbered {', '.join(map(str, missing))} in the database "
                            f"(see `ike cmd=list db phase={phase}`); nothing was removed",
                        )
                    ]
                )
            if phase == 1 and wanted:
                marks = ",".join("?" * len(wanted))
                deps = c.execute(
                    f"SELECT number, name, phase1 FROM phase2 WHERE phase1 IN ({marks}) ORDER BY number",  # noqa: S608
                    wanted,
                ).fetchall()
                if deps:
                    nums = ",".join(str(d[0]) for d in deps)
                    blocked = sorted({d[2] for d in deps})
                    listing = "; ".join(
                        f"phase 2 tunnel {d[0]} ({d[1]}) runs under phase 1 tunnel {d[2]} ({present[d[2]]})"
                        for d in deps
                    )
                    raise StoreError(
                        [
                            (
                                (PHASE1, ""),
                                f"cannot remove phase 1 tunnel {', '.join(map(str, blocked))}: {listing}. "
                                f"Remove those first with `ike cmd=remove db phase=2 numlist={nums}`, "
                                "or remove both phases with `ike cmd=remove db all`; nothing was removed",
                            )
                        ]
                    )
            c.executemany(f"DELETE FROM {table} WHERE number = ?", [(n,) for n in wanted])  # noqa: S608 (names are constants here)
            return [(n, present[n]) for n in wanted]

    def remove_all_tunnels(self) -> list[tuple[int, int, str]]:
        """Remove every phase 2 and phase 1 tunnel in one transaction; returns (phase, number, name)."""
        with self._write() as c:
            p2 = c.execute("SELECT number, name FROM phase2 ORDER BY number").fetchall()
            p1 = c.execute("SELECT number, name FROM phase1 ORDER BY number").fetchall()
            c.execute("DELETE FROM phase2")
            c.execute("DELETE FROM phase1")
            return [(1, n, name) for n, name in p1] + [(2, n, name) for n, name in p2]

    def delete(self, kind: str, name: str) -> None:
        """Delete one entry by kind and name (PSKs: name is the identity text). Refuses to delete
        what other entries refer to, naming them."""
        with self._write() as c:
            users: list[str] = []
            if kind == KM_POLICY:
                users = [
                    f"IKETunnel {r[0]!r}"
                    for r in c.execute(
                        "SELECT t.name FROM phase1 t JOIN km_policy p ON p.id = t.policy_id WHERE p.name = ?", (name,)
                    )
                ]
                sql = "DELETE FROM km_policy WHERE name = ?"
            elif kind == DM_POLICY:
                users = [
                    f"IPSecTunnel {r[0]!r}"
                    for r in c.execute(
                        "SELECT t.name FROM phase2 t JOIN dm_policy p ON p.id = t.policy_id WHERE p.name = ?", (name,)
                    )
                ]
                sql = "DELETE FROM dm_policy WHERE name = ?"
            elif kind == PHASE1:
                users = [
                    f"IPSecTunnel {r[0]!r}"
                    for r in c.execute(
                        "SELECT t.name FROM phase2 t JOIN phase1 p ON p.number = t.phase1 WHERE p.name = ?", (name,)
                    )
                ]
                sql = "DELETE FROM phase1 WHERE name = ?"
            elif kind == PHASE2:
                sql = "DELETE FROM phase2 WHERE name = ?"
            elif kind == GROUP:
                sql = "DELETE FROM ike_group WHERE name = ?"
            elif kind == PSK:
                ident = Identity.parse(name)
                cur = c.execute("DELETE FROM psk WHERE id_type = ? AND id_value = ?", (ident.type.label, ident.value))
                if cur.rowcount == 0:
                    raise StoreError([((kind, name), "no pre-shared key for that identity in the database")])
                return
            else:
                raise StoreError([((kind, name), f"unknown entry type; use one of {', '.join(_KIND_NAMES)}")])
            if users:
                raise StoreError([((kind, name), f"still used by {', '.join(users)}; delete or change those first")])
            if c.execute(sql, (name,)).rowcount == 0:
                raise StoreError([((kind, name), "not in the database")])


_KIND_NAMES = (KM_POLICY, DM_POLICY, PHASE1, PHASE2, GROUP, PSK)


def _upsert_tunnel(c: sqlite3.Connection, table: str, name: str, number: int | None, cols: dict[str, Any]) -> None:
    row = c.execute(f"SELECT number FROM {table} WHERE name = ?", (name,)).fetchone()  # noqa: S608 (names are constants here)
    if row:
        if number is not None:
            cols["number"] = number
        sets = ", ".join(f"{k} = ?" for k in cols)
        c.execute(f"UPDATE {table} SET {sets} WHERE number = ?", (*cols.values(), row[0]))  # noqa: S608 (names are constants here)
    else:
        if number is not None:
            cols["number"] = number
        keys = ", ".join(cols)
        c.execute(f"INSERT INTO {table} ({keys}) VALUES ({', '.join('?' * len(cols))})", tuple(cols.values()))  # noqa: S608 (names are constants here)


def _ts(r: sqlite3.Row, side: str) -> TrafficSelector:
    return TrafficSelector(
        ipaddress.ip_address(r[f"{side}_start"]),
        ipaddress.ip_address(r[f"{side}_end"]),
        r[f"{side}_proto"],
        r[f"{side}_port_start"],
        r[f"{side}_port_end"],
    )


def spec_of_phase1(t: Phase1Tunnel) -> Phase1Spec:
    c = t.credentials
    return Phase1Spec(
        name=t.name,
        local_id=t.local_id,
        remote_id=t.remote_id,
        local_addr=t.local_addr,
        remote_addr=t.remote_addr,
        policy=t.policy.name,
        cert_file=c.cert_file,
        key_file=c.key_file,
        ca_file=c.ca_file,
        autostart=t.autostart,
        number=t.number,
    )


def spec_of_phase2(t: Phase2Tunnel, phase1_name: str) -> Phase2Spec:
    return Phase2Spec(
        name=t.name,
        phase1=phase1_name,
        local_ts=t.local_ts,
        remote_ts=t.remote_ts,
        policy=t.policy.name,
        autostart=t.autostart,
        number=t.number,
    )
