"""Reads are snapshot-consistent: a reader never sees half of a concurrent writer's work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_db_store import DM, KM

from ike.cli.dblist import select
from ike.db.model import Definitions
from ike.db.store import Store
from ike.policy import Phase1Tunnel, Phase2Tunnel

# Adds a phase 1 tunnel with its phase 2 tunnel in one put, and now and then removes them all in
# one transaction, until told to stop. Each of its transactions keeps "every phase 1 tunnel has
# exactly one phase 2 tunnel, named after it" true.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_db_store import p1, p2
    from ike.db.model import Definitions
    from ike.db.store import Store
    s = Store(Path(sys.argv[1]))
    stop, ready = Path(sys.argv[3]), Path(sys.argv[3] + ".ready")
    i = 0
    end = time.monotonic() + 60
    while not stop.exists() and time.monotonic() < end:
        if i % 40 == 39:
            s.remove_all_tunnels()
        else:
            s.put(Definitions(phase1=[p1(f"t{i}", f"198.18.{i // 250 % 250}.{i % 250 + 1}")],
                              phase2=[p2(f"t{i}-net", f"t{i}")]))
        i += 1
        if i == 5:
            ready.touch()
    s.close()
    print(i)
    """
)


def _consistent(p1: list[Phase1Tunnel], p2: list[Phase2Tunnel]) -> None:
    names = {t.number: t.name for t in p1}
    assert sorted(names.values()) == sorted(t.name.removesuffix("-net") for t in p2)
    assert all(names[t.phase1] + "-net" == t.name for t in p2)


def test_reads_never_see_a_concurrent_write_half_done(tmp_path: Path) -> None:
    path = tmp_path / "ike.db"
    stop = tmp_path / "stop"
    with Store(path) as s:
        s.put(Definitions(km_policies=[KM], dm_policies=[DM]))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(Path(__file__).parent), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{stop}.ready").exists():
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read() if writer.stderr else ""
            time.sleep(0.005)
        reads = 0
        with Store(path) as s:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                # ike cmd=list db phase=2 / phase=1+, and what ikedb get reads.
                entries, missing = select(s, "2", None)
                assert missing == []
                _consistent(
                    [t for p, t in entries if isinstance(t, Phase1Tunnel)],
                    [t for p, t in entries if isinstance(t, Phase2Tunnel)],
                )
                entries, _ = select(s, "1+", None)
                _consistent(
                    [t for p, t in entries if isinstance(t, Phase1Tunnel)],
                    [t for p, t in entries if isinstance(t, Phase2Tunnel)],
                )
                d = s.definitions()
                assert sorted(t.name for t in d.phase1) == sorted(t.phase1 for t in d.phase2)
                reads += 1
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    # Both sides really worked at the same time.
    assert int(out) > 20 and reads > 5, (out, reads)
