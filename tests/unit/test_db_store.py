"""The tunnel-definition store: transactions, numbering, references, removal, schema, concurrency."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ike.db.model import Definitions, Phase1Spec, Phase2Spec, PresharedKey, StoreError
from ike.db.schema import SCHEMA_VERSION, SchemaError
from ike.db.store import Store
from ike.policy import (
    AuthMethod,
    DataManagementPolicy,
    EspProposal,
    Group,
    Identity,
    IdType,
    IkeProposal,
    KeyManagementPolicy,
    TrafficSelector,
)

KM = KeyManagementPolicy(
    "ike-a", version=2, proposals=(IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19),)
)
KM1 = KeyManagementPolicy(
    "ike-v1",
    version=1,
    mode="aggressive",
    lifetime_kb=5000,
    proposals=(IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14),),
)
DM = DataManagementPolicy("esp-a", proposals=(EspProposal("aes-gcm-16", 256, None, True),), pfs_group=14)
DM_CHACHA = DataManagementPolicy("esp-chacha", proposals=(EspProposal("chacha20-poly1305", 256, None),))


def p1(name: str, remote: str = "198.18.0.2", policy: str = "ike-a", **kw: object) -> Phase1Spec:
    return Phase1Spec(name, Identity.parse("198.18.0.1"), Identity.parse(remote), "198.18.0.1", remote, policy, **kw)  # type: ignore[arg-type]


def p2(name: str, phase1: str, policy: str = "esp-a", **kw: object) -> Phase2Spec:
    return Phase2Spec(
        name,
        phase1,
        TrafficSelector.parse("198.19.1.0/24"),
        TrafficSelector.parse("198.19.2.0/24"),
        policy,
        **kw,  # type: ignore[arg-type]
    )


def sample() -> Definitions:
    return Definitions(
        km_policies=[KM, KM1],
        dm_policies=[DM, DM_CHACHA],
        phase1=[p1("t1"), p1("t2", "198.18.0.3", "ike-v1", autostart=True)],
        phase2=[p2("n1", "t1"), p2("n2", "t1", autostart=True), p2("n3", "t2")],
        groups=[Group("peers", ("198.18.0.2", "198.18.0.3"))],
        psks=[PresharedKey(Identity.parse("198.18.0.2"), b"\x00secret\xff")],
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "sub" / "ike.db")
    yield s  # type: ignore[misc]
    s.close()


def test_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "ike.db"
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # WAL mode: the log and shared-memory files hold the same data and get the same mode.
    with Store(path) as s:
        s.put(Definitions(km_policies=[KM]))
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix


def test_default_path_follows_ike_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IKE_DB", str(tmp_path / "env.db"))
    with Store() as s:
        assert s.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").exists()


def test_put_then_read_resolves_everything(store: Store) -> None:
    store.put(sample())
    t1s = store.phase1_tunnels()
    assert [(t.number, t.name) for t in t1s] == [(1, "t1"), (2, "t2")]
    assert t1s[0].policy == KM and t1s[1].policy == KM1 and t1s[1].autostart
    assert t1s[0].credentials.psk == b"\x00secret\xff"  # keyed by the remote identity
    assert t1s[1].credentials.psk is None
    t2s = store.phase2_tunnels()
    assert [(t.number, t.name, t.phase1) for t in t2s] == [(1, "n1", 1), (2, "n2", 1), (3, "n3", 2)]
    assert t2s[0].policy == DM and t2s[0].local_ts == TrafficSelector.parse("198.19.1.0/24")
    assert store.phase1(2) == t1s[1] and store.phase1(9) is None
    assert store.phase2(3) == t2s[2] and store.phase2(0) is None
    assert store.groups() == [Group("peers", ("198.18.0.2", "198.18.0.3"))]
    # definitions() is what put() takes: copying it into a new file gives the same database.
    copy = Store(store.path.parent / "copy.db")
    copy.put(store.definitions())
    assert copy.definitions() == store.definitions()
    assert copy.phase1_tunnels() == t1s and copy.phase2_tunnels() == t2s
    copy.close()


def test_refused_put_changes_nothing(store: Store) -> None:
    store.put(sample())
    before = store.definitions()
    # One good new entry and one duplicate: the good one must not be written either.
    bad = Definitions(phase1=[p1("t9", "198.18.0.9"), p1("t1")])
    with pytest.raises(StoreError) as e:
        store.put(bad)
    assert "IKETunnel 't1': already in the database; use -F" in str(e.value)
    assert store.definitions() == before
    with pytest.raises(StoreError, match="IKEProtection 'nope' is neither in the file nor in the database"):
        store.put(Definitions(phase1=[p1("t9", policy="nope")]))
    with pytest.raises(StoreError, match="IKETunnel 'ghost' is neither"):
        store.put(Definitions(phase2=[p2("n9", "ghost")]))
    assert store.definitions() == before


def test_force_overwrites_in_place_and_keeps_numbers(store: Store) -> None:
    store.put(sample())
    store.put(Definitions(phase1=[p1("t1", "198.18.0.7")], km_policies=[replace(KM, lifetime_s=600)]), force=True)
    t1 = store.phase1(1)
    assert t1 is not None and t1.name == "t1" and t1.remote_addr == "198.18.0.7" and t1.policy.lifetime_s == 600
    assert [t.phase1 for t in store.phase2_tunnels()] == [1, 1, 2]


def test_numbers_are_stable_and_never_reused(store: Store) -> None:
    store.put(sample())
    store.remove_tunnels(2, [3])
    store.put(Definitions(phase2=[p2("n4", "t2")]))
    assert [t.number for t in store.phase2_tunnels()] == [1, 2, 4]
    store.put(Definitions(phase2=[p2("n7", "t2", number=7)]))
    assert store.phase2(7) is not None and store.phase2(7).name == "n7"  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="tunnel number 7 belongs to IPSecTunnel 'n7'"):
        store.put(Definitions(phase2=[p2("n8", "t2", number=7)]))


def test_phase2_policy_is_checked_against_its_phase1_version(store: Store) -> None:
    store.put(sample())
    # ChaCha20-Poly1305 has no IKEv1 ESP transform ID: refused under the IKEv1 tunnel t2.
    with pytest.raises(StoreError, match="chacha20-poly1305 is not defined for ESP with IKEv1"):
        store.put(Definitions(phase2=[p2("n9", "t2", policy="esp-chacha")]))
    assert store.phase2_by_name("n9") is None
    store.put(Definitions(phase2=[p2("n9", "t1", policy="esp-chacha")]))


def test_validation_refuses_bad_policies(store: Store) -> None:
    cases = [
        (Definitions(km_policies=[replace(KM, proposals=())]), "needs at least one proposal"),
        (Definitions(km_policies=[replace(KM, mode="aggressive")]), "aggressive mode is an IKEv1 exchange"),
        (Definitions(km_policies=[replace(KM, lifetime_kb=10)]), "kilobytes is an IKEv1"),
        (
            Definitions(
                km_policies=[replace(KM, proposals=(IkeProposal("aes-cbc", 100, "hmac-sha1-96", "hmac-sha1", 14),))]
            ),
            "aes-cbc takes key lengths",
        ),
        (Definitions(dm_policies=[replace(DM, pfs_group=99)]), "unknown PFS group 99"),
        (Definitions(km_policies=[KM, replace(KM, lifetime_s=5)]), "defined twice"),
        (Definitions(km_policies=[replace(KM, name="a,b")]), "no commas"),
        (Definitions(km_policies=[replace(KM, auth=AuthMethod.RSA)], phase1=[p1("t")]), "authenticates with rsa"),
        (Definitions(psks=[PresharedKey(Identity.parse("198.18.0.2"), b"")]), "the key is empty"),
        (Definitions(groups=[Group("g", ())]), "at least one member"),
        (Definitions(groups=[Group("g", ("198.18.0.2", "not an id !!"))]), "'not an id !!' is not a remote ID"),
        (Definitions(groups=[Group("g", ("198.18.0.300",))]), "'198.18.0.300' is not an IP address"),
        (
            Definitions(km_policies=[KM], phase1=[replace(p1("t"), remote_id=Identity(IdType.FQDN, "bad name!"))]),
            "remote identity: FQDN identity 'bad name!' is not a host name",
        ),
        (
            Definitions(psks=[PresharedKey(Identity(IdType.DN, "CN=x,,O=y"), b"k")]),
            "is not a distinguished name",
        ),
    ]
    for defs, why in cases:
        with pytest.raises(StoreError, match=why):
            store.put(defs)
    assert store.definitions() == Definitions()
    # What is right passes: members as remid= takes them, identities of every type.
    good = [
        "198.18.0.2",
        "2001:db8::7",
        "198.19.0.0/24",
        "198.19.0.1-198.19.0.9",
        "gw3.example",
        "gw3.example.",
        "alice@example.org",
        "CN=gw,O=Example",
        "C=US, O=Example, CN=gw",
    ]
    store.put(Definitions(groups=[Group("g", tuple(good))]))
    store.put(Definitions(psks=[PresharedKey(Identity(IdType.KEY_ID, "0x00ff"), b"k")]))


def test_remove_refuses_phase1_with_dependants_and_says_what_to_do(store: Store) -> None:
    store.put(sample())
    before = store.definitions()
    with pytest.raises(StoreError) as e:
        store.remove_tunnels(1, [1])
    msg = str(e.value)
    assert "phase 2 tunnel 1 (n1) runs under phase 1 tunnel 1 (t1)" in msg
    assert "phase 2 tunnel 2 (n2)" in msg and "n3" not in msg
    assert "ike cmd=remove db phase=2 numlist=1,2" in msg
    with pytest.raises(StoreError, match="no phase 2 tunnel numbered 5, 6"):
        store.remove_tunnels(2, [1, 5, 6])
    assert store.definitions() == before
    assert store.remove_tunnels(2, [1, 2]) == [(1, "n1"), (2, "n2")]
    assert store.remove_tunnels(1, [1]) == [(1, "t1")]
    assert [t.name for t in store.phase1_tunnels()] == ["t2"]
    assert store.remove_all_tunnels() == [(1, 2, "t2"), (2, 3, "n3")]
    assert store.phase1_tunnels() == [] and store.phase2_tunnels() == []
    assert store.km_policies() == [KM, KM1]  # policies and keys are not tunnels: they stay


def test_delete_refuses_what_is_in_use(store: Store) -> None:
    store.put(sample())
    with pytest.raises(StoreError, match="still used by IKETunnel 't1'"):
        store.delete("IKEProtection", "ike-a")
    with pytest.raises(StoreError, match="still used by IPSecTunnel 'n1', IPSecTunnel 'n2'"):
        store.delete("IKETunnel", "t1")
    with pytest.raises(StoreError, match="not in the database"):
        store.delete("IPSecTunnel", "zz")
    store.delete("IKEPresharedKey", "198.18.0.2")
    assert store.phase1(1).credentials.psk is None  # type: ignore[union-attr]
    store.delete("IKEGroup", "peers")
    assert store.groups() == []


def test_schema_version_and_newer_files(tmp_path: Path) -> None:
    path = tmp_path / "ike.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer ike"):
        Store(path)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from test_db_store import p1, p2
    from ike.db.model import Definitions
    from ike.db.store import Store
    s = Store(Path(sys.argv[1]))
    prefix, go = sys.argv[2], Path(sys.argv[4])
    Path(f"{go}.{prefix}").touch()
    while not go.exists():
        time.sleep(0.001)
    started = time.time()
    for i in range(N):
        s.put(Definitions(phase1=[p1(f"{prefix}{i}", f"198.18.{1 if prefix == 'a' else 2}.{i + 1}")],
                          phase2=[p2(f"{prefix}{i}-net", f"{prefix}{i}")]))
    s.close()
    Path(f"{go}.{prefix}.times").write_text(f"{started} {time.time()}")
    """
)
N = 60


def test_two_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ike.db"
    go = tmp_path / "go"
    with Store(path) as s:
        s.put(Definitions(km_policies=[KM], dm_policies=[DM]))
    here = str(Path(__file__).parent)
    script = WRITER.replace("range(N)", f"range({N})")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), prefix, here, str(go)], stderr=subprocess.PIPE)
        for prefix in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{p}").exists() for p in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with Store(path) as s:
        t1 = s.phase1_tunnels()
        t2 = s.phase2_tunnels()
    assert sorted(t.name for t in t1) == sorted(f"{p}{i}" for p in "ab" for i in range(N))
    assert len({t.number for t in t1}) == 2 * N and len({t.number for t in t2}) == 2 * N
    by_number = {t.number: t.name for t in t1}
    assert all(by_number[t.phase1] + "-net" == t.name for t in t2)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert os.stat(path).st_mode & 0o077 == 0
    # The writers really ran at the same time (SQLite's lock may still let one finish first).
    (a0, a1), (b0, b1) = (map(float, Path(f"{go}.{p}.times").read_text().split()) for p in "ab")
    assert a0 < b1 and b0 < a1


def test_overwriting_a_policy_cannot_break_tunnels_outside_the_batch(store: Store) -> None:
    store.put(sample())
    store.put(Definitions(phase2=[p2("n9", "t1", policy="esp-chacha")]))
    before = store.definitions()
    # t1's policy turned into IKEv1: n9's ChaCha20 proposal would no longer be negotiable.
    with pytest.raises(StoreError, match=r"IPSecTunnel 'n9'.*not defined for ESP with IKEv1"):
        store.put(Definitions(km_policies=[replace(KM, version=1)]), force=True)
    # ... and to signatures without certificates.
    with pytest.raises(StoreError, match=r"IKETunnel 't1'.*authenticates with rsa"):
        store.put(Definitions(km_policies=[replace(KM, auth=AuthMethod.RSA)]), force=True)
    assert store.definitions() == before
