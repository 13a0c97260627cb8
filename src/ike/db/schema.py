"""The database schema as a list of migrations; PRAGMA user_version says how many have run.

All pending migrations run in one transaction together with their version bumps, so a crash or a
failing statement leaves the file at the old version, never between. Append new migrations; never
edit old ones. A migration is an SQL script: statements end where SQLite says they end
(sqlite3.complete_statement), so trigger bodies, literals and comments may hold ';'.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

MIGRATIONS: tuple[str, ...] = (
    # 1: the tunnel definitions.
    """
    CREATE TABLE km_policy (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        mode TEXT NOT NULL,
        lifetime_s INTEGER NOT NULL,
        lifetime_kb INTEGER NOT NULL,
        auth TEXT NOT NULL,
        dpd_delay_s INTEGER NOT NULL,
        dpd_action TEXT NOT NULL
    );
    CREATE TABLE km_proposal (
        policy_id INTEGER NOT NULL REFERENCES km_policy(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        encr TEXT NOT NULL,
        encr_keylen INTEGER NOT NULL,
        integ TEXT,
        prf TEXT NOT NULL,
        dh INTEGER NOT NULL,
        PRIMARY KEY (policy_id, seq)
    );
    CREATE TABLE dm_policy (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        protocol TEXT NOT NULL,
        pfs_group INTEGER NOT NULL,
        lifetime_s INTEGER NOT NULL,
        lifetime_kb INTEGER NOT NULL,
        mode TEXT NOT NULL
    );
    CREATE TABLE dm_proposal (
        policy_id INTEGER NOT NULL REFERENCES dm_policy(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        encr TEXT NOT NULL,
        encr_keylen INTEGER NOT NULL,
        integ TEXT,
        esn INTEGER NOT NULL,
        PRIMARY KEY (policy_id, seq)
    );
    CREATE TABLE phase1 (
        number INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        local_id_type TEXT NOT NULL,
        local_id TEXT NOT NULL,
        remote_id_type TEXT NOT NULL,
        remote_id TEXT NOT NULL,
        local_addr TEXT NOT NULL,
        remote_addr TEXT NOT NULL,
        policy_id INTEGER NOT NULL REFERENCES km_policy(id),
        cert_file TEXT,
        key_file TEXT,
        ca_file TEXT,
        autostart INTEGER NOT NULL
    );
    CREATE TABLE phase2 (
        number INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        phase1 INTEGER NOT NULL REFERENCES phase1(number) ON UPDATE CASCADE,
        local_start TEXT NOT NULL,
        local_end TEXT NOT NULL,
        local_proto INTEGER NOT NULL,
        local_port_start INTEGER NOT NULL,
        local_port_end INTEGER NOT NULL,
        remote_start TEXT NOT NULL,
        remote_end TEXT NOT NULL,
        remote_proto INTEGER NOT NULL,
        remote_port_start INTEGER NOT NULL,
        remote_port_end INTEGER NOT NULL,
        policy_id INTEGER NOT NULL REFERENCES dm_policy(id),
        autostart INTEGER NOT NULL
    );
    CREATE INDEX phase2_by_phase1 ON phase2(phase1);
    CREATE TABLE ike_group (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE ike_group_member (
        group_id INTEGER NOT NULL REFERENCES ike_group(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        member TEXT NOT NULL,
        PRIMARY KEY (group_id, seq)
    );
    CREATE TABLE psk (
        id_type TEXT NOT NULL,
        id_value TEXT NOT NULL,
        key BLOB NOT NULL,
        PRIMARY KEY (id_type, id_value)
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    pass


def statements(script: str) -> Iterator[str]:
    """The statements of `script`, each complete as SQLite parses it. (conn.executescript would
    do the splitting, but it commits any open transaction first, and migrations need theirs.)"""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                yield buf
            buf = ""
    # The split adds a ';' after the last piece; anything left over never completed.
    rest = buf[:-1]
    if rest.strip():
        raise SchemaError(f"migration script ends in an incomplete statement: {rest.strip()[:60]!r}")


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] | None = None) -> None:
    """Bring the database up to len(migrations) (default: MIGRATIONS). Holds the write lock while
    checking, so two processes opening a new file at once do not both run migration 1. An
    up-to-date file is only read, so readers (ike cmd=list db, the daemon) never wait for the write
    lock."""
    if migrations is None:
        migrations = MIGRATIONS
    target = len(migrations)
    if conn.execute("PRAGMA user_version").fetchone()[0] == target:
        return
    conn.execute("BEGIN IMMEDIATE")
    version = 0
    n = 0
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > target:
            raise SchemaError(
                f"the database has schema version {version}, written by a newer ike; this ike knows "
                f"versions up to {target}: upgrade ike or use another IKE_DB"
            )
        for n in range(version, target):
            for statement in statements(migrations[n]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {n + 1}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        conn.execute("ROLLBACK")
        raise SchemaError(
            f"upgrading the database failed in migration {n + 1}: {e}; nothing was changed, the file is "
            f"still at schema version {version}. Report this with the message; the older ike still reads it"
        ) from e
    except BaseException:
        conn.execute("ROLLBACK")
        raise
