"""Schema migrations: statements split as SQLite reads them, upgrades keep data, failures roll back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_db_store import sample

from ike.db import schema
from ike.db.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate, statements
from ike.db.store import Store

# A later migration of the kind that splitting on ';' broke: a trigger body holds ';', and so do
# a string literal and a comment.
WITH_TRIGGER = """
    CREATE TABLE change_log (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
    -- log every new phase 1 tunnel; the trigger body has its own statements
    CREATE TRIGGER phase1_added AFTER INSERT ON phase1 BEGIN
        INSERT INTO change_log (what) VALUES ('phase1;' || NEW.name);
        INSERT INTO change_log (what) VALUES ('done');
    END;
    INSERT INTO change_log (what) VALUES ('created; at upgrade');
"""


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def test_statements_split_where_sqlite_does() -> None:
    got = list(statements(WITH_TRIGGER))
    assert len(got) == 3, got
    assert got[1].lstrip().startswith("-- log every") and got[1].rstrip().endswith("END;")
    assert all(sqlite3.complete_statement(s) for s in got)
    with pytest.raises(SchemaError, match="incomplete"):
        list(statements("CREATE TABLE a (x); CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;"))


def test_an_older_database_is_upgraded_and_keeps_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    # Built by the steps of the older schema, then filled by that version.
    conn = _connect(path)
    migrate(conn, MIGRATIONS)
    conn.close()
    with Store(path) as s:
        s.put(sample())
        before = s.definitions()
    assert _version(path) == SCHEMA_VERSION
    newer = (*MIGRATIONS, WITH_TRIGGER)
    conn = _connect(path)
    migrate(conn, newer)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(newer)
    assert [r[0] for r in conn.execute("SELECT what FROM change_log")] == ["created; at upgrade"]
    conn.execute("INSERT INTO km_policy VALUES (NULL, 'k9', 2, 'main', 1, 0, 'psk', 0, 'clear')")
    conn.execute(
        "INSERT INTO phase1 (name, local_id_type, local_id, remote_id_type, remote_id, local_addr, remote_addr,"
        " policy_id, autostart) VALUES ('t9', 'ipv4', '198.18.0.1', 'ipv4', '198.18.0.9', '', '198.18.0.9',"
        " (SELECT id FROM km_policy WHERE name = 'k9'), 0)"
    )
    assert [r[0] for r in conn.execute("SELECT what FROM change_log ORDER BY id")][1:] == ["phase1;t9", "done"]
    conn.execute("DELETE FROM phase1 WHERE name = 't9'")
    conn.execute("DELETE FROM km_policy WHERE name = 'k9'")
    conn.close()
    # The data written at the old version reads back unchanged through the new schema.
    monkeypatch.setattr(schema, "MIGRATIONS", newer)
    with Store(path) as s:
        assert s.definitions() == before


def test_a_failing_migration_rolls_back_and_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Store(path) as s:
        s.put(sample())
        before = s.definitions()
    raw_version = _version(path)
    # Its first statements work (a table, a trigger); a later one fails.
    failing = WITH_TRIGGER + "\n    INSERT INTO no_such_table VALUES (1);\n"
    conn = _connect(path)
    with pytest.raises(SchemaError) as e:
        migrate(conn, (*MIGRATIONS, "CREATE TABLE fine (x);", failing))
    msg = str(e.value)
    assert f"migration {SCHEMA_VERSION + 2}" in msg and "no_such_table" in msg
    assert f"still at schema version {raw_version}" in msg
    assert not conn.in_transaction
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert not {"fine", "change_log", "phase1_added"} & names
    conn.close()
    assert _version(path) == raw_version
    with Store(path) as s:
        assert s.definitions() == before
        s.delete("IKEGroup", "peers")  # still writable
