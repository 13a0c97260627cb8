"""The IKEv1 engine alone (no daemon) against strongSwan 5.9.8: main and aggressive mode, pre-shared
keys and RSA/ECDSA certificates, both roles. strongSwan's kernel-libipsec fakes NAT-D, so every case
also goes through NAT-T: the move to port 4500 and UDP-encapsulated ESP proposals.

The engine runs in namespace a through v1_engine_driver.py (real sockets); charon runs in b. Checks:
both sides established, the same algorithms, and each side's inbound SPI is the other's outbound."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from harness import require, require_root, require_tools
from harness.netns import Host, two_hosts
from harness.pki import make_pki
from harness.strongswan import Charon, Child, Conn, available

PSK = "ikev1 engine interop key, not a secret"
DRIVER = Path(__file__).with_name("v1_engine_driver.py")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    require_root()
    require_tools("ip", "unshare")
    ok, why = available()
    require(ok, why)


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host, Charon]]:
    with two_hosts() as (a, b), Charon(b) as charon:
        yield a, b, charon


def _run_driver(a: Host, cfg: dict[str, object]) -> subprocess.Popen[str]:
    return a.popen(
        [sys.executable, str(DRIVER), json.dumps(cfg)],
        env={"PYTHONPATH": str(SRC)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _events(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, object]]:
    out, err = proc.communicate(timeout=timeout)
    evs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"driver failed: {err}"
    return evs


def _rfc4514(cert_path: Path) -> str:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("mode", ["main", "aggressive"])
@pytest.mark.parametrize("auth", ["psk", "rsa", "ecdsa"])
def test_engine_with_strongswan(
    hosts: tuple[Host, Host, Charon], tmp_path: Path, role: str, mode: str, auth: str
) -> None:
    a, b, charon = hosts
    cfg: dict[str, object] = {
        "role": "i" if role == "initiator" else "r",
        "mode": mode,
        "auth": auth,
        "local": a.outer4,
        "remote": b.outer4,
        "local_ts": a.inner_net4,
        "remote_ts": b.inner_net4,
        "pfs": 14,
        "duration": 12,
    }
    conn_kw: dict[str, object] = {}
    if auth == "psk":
        cfg.update(psk=PSK, local_id=a.outer4, remote_id=b.outer4)
        conn_kw.update(psk=PSK, local_id=b.outer4, remote_id=a.outer4)
    else:
        pki = make_pki(tmp_path / "pki", {"a": a.outer4, "b": b.outer4}, kind=auth)
        ha, hb = pki.hosts["a"], pki.hosts["b"]
        cfg.update(cert=str(ha.cert), key=str(ha.key), ca=str(pki.ca_cert),
                   local_id=_rfc4514(ha.cert), remote_id=hb.dn)  # fmt: skip
        conn_kw.update(auth="pubkey", local_cert=hb.cert, local_key=hb.key, cacerts=[pki.ca_cert],
                       local_id=hb.dn, remote_id=ha.dn)  # fmt: skip
    charon.load(
        Conn(
            version=1,
            aggressive=mode == "aggressive",
            local_addrs=[b.outer4],
            remote_addrs=[a.outer4],
            proposals=["aes256-sha256-modp2048"],
            children=[Child(local_ts=[b.inner_net4], remote_ts=[a.inner_net4], esp_proposals=["aes128-sha1-modp2048"])],
            **conn_kw,  # type: ignore[arg-type]
        )
    )
    proc = _run_driver(a, cfg)
    if role == "responder":
        time.sleep(1.0)  # the driver's sockets are bound
        charon.initiate("net", "ike")
    evs = _events(proc, timeout=30)
    kinds = [e["type"] for e in evs]
    assert "IkeSaEstablished" in kinds and "ChildSaEstablished" in kinds, f"{evs}\n--- charon ---\n{charon.log(60)}"
    assert "NegotiationFailed" not in kinds, evs
    ike = next(e for e in evs if e["type"] == "IkeSaEstablished")
    child = next(e for e in evs if e["type"] == "ChildSaEstablished")
    assert child["udp_encap"] is True and child["mode"] == "tunnel"
    assert ike["nat_remote"] is True  # kernel-libipsec's faked NAT-D
    sas = charon.list_sas("ike")
    assert sas and sas[0].state == "ESTABLISHED"
    c = sas[0].child("net")
    assert c is not None, charon.log(60)
    assert f"{c.spi_in:08x}" == child["outbound"] and f"{c.spi_out:08x}" == child["inbound"]
