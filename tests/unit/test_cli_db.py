"""`ike cmd=list db` and `ike cmd=remove db`: listings, ordering, json, removal rules, root, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ike.cli import ikedb
from ike.cli.main import main
from ike.db.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SRC = str(Path(__file__).resolve().parents[2] / "src")
SECRETS = ("correct horse battery staple 42", "6b3e1c0d9a7f4e2b8c5d0a1f3e7b9c2d")


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ike.db"
    monkeypatch.setenv("IKE_DB", str(path))
    # Phase 1: 1 a-to-b, 2 site-a-b. Phase 2: 1 a-to-b-hosts (under 1), 2 net-a-b, 3 web-a-b (under 2).
    for f in ("host-to-host-psk.xml", "subnet-to-subnet-psk.xml"):
        assert ikedb.main(["put", str(EXAMPLES / f)]) == 0
    return path


def ike(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def rows(out: str) -> list[tuple[str, str, str]]:
    """(phase, number, name) of each row of a concise listing."""
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["Phase", "Tun#", "Name"]
    return [tuple(line.split()[:3]) for line in lines[1:]]  # type: ignore[misc]


def test_list_default_is_phase_1_plus(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = ike(capsys, "cmd=list", "db")
    assert rc == 0
    assert rows(out) == [
        ("1", "1", "a-to-b"),
        ("2", "1", "a-to-b-hosts"),
        ("1", "2", "site-a-b"),
        ("2", "2", "net-a-b"),
        ("2", "3", "web-a-b"),
    ]
    assert "198.19.2.10-198.19.2.20 proto 6 port 443" in out
    assert ike(capsys, "cmd=list", "db", "phase=1+")[1] == out


def test_list_phase_1_and_numlist(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = ike(capsys, "cmd=list", "db", "phase=1")
    assert rc == 0 and rows(out) == [("1", "1", "a-to-b"), ("1", "2", "site-a-b")]
    rc, out, _ = ike(capsys, "numlist=2", "db", "cmd=list")
    assert rc == 0 and rows(out) == [("1", "2", "site-a-b"), ("2", "2", "net-a-b"), ("2", "3", "web-a-b")]


def test_list_phase_2_each_preceded_by_its_phase_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The manual's example 2: ike cmd=list phase=2 numlist=1-3 db
    rc, out, _ = ike(capsys, "cmd=list", "phase=2", "numlist=1-3", "db")
    assert rc == 0
    assert rows(out) == [
        ("1", "1", "a-to-b"),
        ("2", "1", "a-to-b-hosts"),
        ("1", "2", "site-a-b"),
        ("2", "2", "net-a-b"),
        ("2", "3", "web-a-b"),
    ]
    rc, out, _ = ike(capsys, "cmd=list", "phase=2", "numlist=3", "db")
    assert rows(out) == [("1", "2", "site-a-b"), ("2", "3", "web-a-b")]


def test_missing_numbers_are_reported(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = ike(capsys, "cmd=list", "db", "phase=1", "numlist=2,7-8")
    assert rc == 1 and rows(out) == [("1", "2", "site-a-b")]
    assert "no phase 1 tunnel numbered 7, 8 in the database" in err


def test_verbose_and_json_carry_the_same_content(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, _ = ike(capsys, "cmd=list", "db", "verbose")
    assert rc == 0
    assert "Phase 1 tunnel 2: site-a-b" in text and "IKEv1, main mode" in text
    assert "Phase 2 tunnel 3: web-a-b (under phase 1 tunnel 2)" in text
    assert "aes-cbc-256/hmac-sha2-256-128" in text and "DH group 14" in text and "1048576 KB" in text
    assert text.index("Phase 1 tunnel 1:") < text.index("Phase 2 tunnel 1:") < text.index("Phase 1 tunnel 2:")
    rc, js, _ = ike(capsys, "cmd=list", "db", "verbose", "format=json")
    doc = json.loads(js)
    order = [(t["phase"], t["number"], t["name"]) for t in doc["tunnels"]]
    assert order == [(1, 1, "a-to-b"), (2, 1, "a-to-b-hosts"), (1, 2, "site-a-b"), (2, 2, "net-a-b"), (2, 3, "web-a-b")]
    site = doc["tunnels"][2]
    assert site["policy"]["ike_version"] == 1 and site["policy"]["proposals"][0]["dh"] == 14
    assert site["credentials"]["psk_set"] is True and site["remote_addr"] == "198.18.1.2"
    web = doc["tunnels"][4]
    assert web["remote_id"]["protocol"] == 6 and web["remote_id"]["port_start"] == 443
    # Concise json: the same rows as the concise text.
    _, concise, _ = ike(capsys, "cmd=list", "db")
    _, cjs, _ = ike(capsys, "cmd=list", "db", "format=json")
    assert [(str(t["phase"]), str(t["number"]), t["name"]) for t in json.loads(cjs)["tunnels"]] == rows(concise)


def test_no_listing_prints_a_key(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["verbose"], ["format=json"], ["verbose", "format=json"], ["phase=2", "verbose"]):
        _, out, err = ike(capsys, "cmd=list", "db", *extra)
        for secret in SECRETS:
            assert secret not in out + err
            assert secret.encode().hex() not in out + err


def test_remove_rules(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = ike(capsys, "cmd=remove", "db", "phase=1", "numlist=2")
    assert rc == 1
    assert "phase 2 tunnel 2 (net-a-b) runs under phase 1 tunnel 2 (site-a-b)" in err
    assert "ike cmd=remove db phase=2 numlist=2,3" in err
    rc, _, err = ike(capsys, "cmd=remove", "db", "numlist=2")
    assert rc == 2 and "needs phase=1 or phase=2" in err
    rc, _, err = ike(capsys, "cmd=remove", "db", "phase=2", "numlist=3,9")
    assert rc == 1 and "no phase 2 tunnel numbered 9" in err
    with Store(db) as s:
        assert len(s.phase2_tunnels()) == 3  # nothing removed by the refusals
    rc, out, _ = ike(capsys, "cmd=remove", "db", "phase=2", "numlist=2-3")
    assert rc == 0 and "removed phase 2 tunnel 2 (net-a-b)" in out and "removed phase 2 tunnel 3 (web-a-b)" in out
    rc, out, _ = ike(capsys, "cmd=remove", "db", "phase=1", "numlist=2", "format=json")
    assert rc == 0 and json.loads(out) == {"removed": [{"phase": 1, "number": 2, "name": "site-a-b"}]}
    rc, _, err = ike(capsys, "cmd=remove", "db", "phase=1", "all")
    assert rc == 1 and "a-to-b-hosts" in err
    rc, out, _ = ike(capsys, "cmd=remove", "db", "all")
    assert rc == 0 and "removed phase 1 tunnel 1 (a-to-b)" in out and "removed phase 2 tunnel 1 (a-to-b-hosts)" in out
    with Store(db) as s:
        assert s.phase1_tunnels() == [] and s.phase2_tunnels() == []
    rc, out, err = ike(capsys, "cmd=list", "db")
    assert rc == 0 and out == "" and "no tunnels in the database" in err


def test_remove_phase_2_all_keeps_phase_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = ike(capsys, "cmd=remove", "phase=2", "all", "db")
    assert rc == 0
    with Store(db) as s:
        assert s.phase2_tunnels() == [] and len(s.phase1_tunnels()) == 2


def test_remove_db_without_numlist_removes_everything(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The manual: "When numlist is omitted, all tunnels are deactivated or removed from the database."
    rc, _, _ = ike(capsys, "cmd=remove", "db")
    assert rc == 0
    with Store(db) as s:
        assert s.phase1_tunnels() == [] and s.km_policies() != []


def test_usage_errors_exit_2_with_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = ike(capsys, "cmd=list", "db", "role=i")
    assert rc == 2 and "This cannot be used in conjunction with role" in err
    rc, _, err = ike(capsys, "cmd=list", "db", "numlist=3-1")
    assert rc == 2 and "reversed" in err
    rc, out, _ = ike(capsys, "--help")
    assert rc == 0 and "cmd=list" in out


def test_without_the_daemon_part_the_error_is_clear(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail exactly as a missing ike/cli/active.py would.
    monkeypatch.setitem(sys.modules, "ike.cli.active", None)
    for argv in (["cmd=list"], ["cmd=activate", "phase=1", "numlist=1"], ["cmd=log"], ["cmd=remove", "all"]):
        rc, out, err = ike(capsys, *argv)
        assert rc == 1 and out == "" and "the daemon part is not available yet" in err
    # The database half does not need it.
    assert ike(capsys, "cmd=list", "db")[0] == 0


def run_as(user: str | None, *argv: str, db: Path) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ike.cli.main", *argv],
        capture_output=True,
        text=True,
        cwd="/",
        env={"IKE_DB": str(db), "PYTHONPATH": SRC},
        timeout=60,
    )


def test_non_root_is_refused(db: Path) -> None:
    for argv in (["cmd=list", "db"], ["cmd=remove", "db", "all"], ["cmd=activate"]):
        r = run_as("nobody", *argv, db=db)
        assert r.returncode == 4, r.stderr
        assert "you must have root access to use the ike command" in r.stderr and r.stdout == ""
    with Store(db) as s:
        assert len(s.phase1_tunnels()) == 2


def test_list_db_does_not_import_the_crypto_stack(db: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ike.cli.main", "cmd=list", "db", "verbose"],
        capture_output=True,
        text=True,
        env={"IKE_DB": str(db), "PYTHONPATH": SRC},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "a-to-b" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "ike.db.store" in imported  # the check sees our imports at all
    heavy = sorted(m for m in imported if m.split(".")[0] in ("cryptography", "_cffi_backend", "xml", "pyroute2"))
    assert heavy == [], heavy
    assert "ike.proto.transforms" not in imported


def test_a_missing_database_is_reported_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped IKE_DB: listing or removing must not leave an empty database (and directories) there.
    path = tmp_path / "mistyped" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(path))
    for argv in (["cmd=list", "db"], ["cmd=list", "db", "phase=2", "format=json"], ["cmd=remove", "db", "all"]):
        rc, out, err = ike(capsys, *argv)
        assert rc == 1 and out == "", (argv, out)
        assert f"no tunnel database at {path}" in err and "ikedb put FILE" in err and "IKE_DB" in err, err
        assert not path.parent.exists()
    # put creates it; then list works.
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    assert ike(capsys, "cmd=list", "db")[0] == 0
