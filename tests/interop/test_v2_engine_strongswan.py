"""The IKEv2 engine alone (no daemon) against strongSwan 5.9.8 (charon), both roles: PSK and RSA/ECDSA/Ed25519
certificates, GCM/CBC/ChaCha20 with X25519/MODP/ECP (charon's own choice forces an INVALID_KE_PAYLOAD
round where the groups differ), a second CHILD SA, CHILD and IKE rekeys with PFS, liveness checks,
fragmentation and delete. strongSwan's kernel-libipsec fakes NAT-D, so each case also moves to port
4500 with UDP-encapsulated ESP.

The engine runs in namespace a through v2_engine_driver.py (real sockets), charon in b. In the
middle of the script the driver prints its live CHILD SAs; charon's list must hold the same pairs."""

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
from harness.pki import HostCert, make_pki
from harness.strongswan import Charon, Child, Conn, available

PSK = "ikev2 engine interop key, not a secret"
DRIVER = Path(__file__).with_name("v2_engine_driver.py")
SRC = Path(__file__).resolve().parents[2] / "src"

# (our IKE proposals in order, charon's proposals, our ESP, charon's esp_proposals, PFS group)
SUITES = {
    "gcm-x25519": (["gcm-x25519"], ["aes256gcm16-prfsha256-x25519"], "gcm", ["aes128gcm16-x25519"], 31),
    "cbc-modp2048-invalid-ke": (["gcm-x25519", "cbc-modp2048"], ["aes128-sha256-modp2048"], "cbc",
                                ["aes256-sha256-modp2048"], 14),
    "chacha-ecp256": (["chacha-ecp256"], ["chacha20poly1305-prfsha512-ecp256"], "chacha",
                      ["chacha20poly1305-ecp256"], 19),
}  # fmt: skip


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


def _halves(net: str) -> tuple[str, str]:
    base = net.rsplit(".", 1)[0]
    return f"{base}.0/25", f"{base}.128/25"


def _ed25519(host: HostCert, ca_cert: Path, ca_key: Path) -> HostCert:
    """`host` reissued with an Ed25519 key by the same CA (the shared PKI helper makes RSA/ECDSA only)."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    old = x509.load_pem_x509_certificate(host.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_priv = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )  # fmt: skip
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_priv, hashes.SHA256())  # type: ignore[arg-type]
    cpath, kpath = host.cert.with_suffix(".ed.pem"), host.key.with_suffix(".ed.key")
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))  # fmt: skip
    return HostCert(host.name, cpath, kpath, host.dn, host.san)


def _rfc4514(cert_path: Path) -> str:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


def _read_until(proc: subprocess.Popen[str], kind: str, timeout: float, seen: list[dict[str, object]]) -> dict:  # type: ignore[type-arg]
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            ev = json.loads(line)
            seen.append(ev)
            if ev["type"] == kind:
                return ev  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} from the driver; events: {seen}")


CASES = [("psk", "gcm-x25519"), ("psk", "cbc-modp2048-invalid-ke"), ("psk", "chacha-ecp256"), ("rsa", "gcm-x25519"),
         ("ecdsa", "cbc-modp2048-invalid-ke"), ("ed25519", "gcm-x25519")]  # fmt: skip


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize(("auth", "suite"), CASES)
def test_engine_with_strongswan(
    hosts: tuple[Host, Host, Charon], tmp_path: Path, role: str, auth: str, suite: str
) -> None:
    a, b, charon = hosts
    ours_ike, their_ike, ours_esp, their_esp, pfs = SUITES[suite]
    a1, a2 = _halves(a.inner_net4)
    b1, _ = _halves(b.inner_net4)  # charon's side stays the half holding its inner address (routes)
    script: list[list[object]] = [[1, "rekey_child"], [3, "rekey_ike"], [5, "rekey_child"], [8, "snapshot"],
                                  [10, "delete"]]  # fmt: skip
    if role == "initiator":
        script.insert(0, [0.5, "start_child2"])
    cfg: dict[str, object] = {
        "role": "i" if role == "initiator" else "r", "auth": auth, "local": a.outer4, "remote": b.outer4,
        "ts": [[a1, b1], [a2, b1]], "ike": ours_ike, "esp": ours_esp, "pfs": pfs, "dpd": 2, "duration": 30,
        "script": script, "fragment_size": 600 if auth == "rsa" else 1280,
    }  # fmt: skip
    conn_kw: dict[str, object] = {}
    if auth == "psk":
        cfg.update(psk=PSK, local_id=a.outer4, remote_id=b.outer4)
        conn_kw.update(psk=PSK, local_id=b.outer4, remote_id=a.outer4)
    else:
        pki = make_pki(tmp_path / "pki", {"a": a.outer4, "b": "b.example"}, kind="ecdsa" if auth == "ed25519" else auth)
        ha, hb = pki.hosts["a"], pki.hosts["b"]
        if auth == "ed25519":
            ha, hb = _ed25519(ha, pki.ca_cert, pki.ca_key), _ed25519(hb, pki.ca_cert, pki.ca_key)
        cfg.update(cert=str(ha.cert), key=str(ha.key), ca=str(pki.ca_cert), local_id=_rfc4514(ha.cert),
                   remote_id="b.example")  # fmt: skip
        conn_kw.update(auth="pubkey", local_cert=hb.cert, local_key=hb.key, cacerts=[pki.ca_cert],
                       local_id="b.example", remote_id=ha.dn)  # fmt: skip
    children = [
        Child(name="net", local_ts=[b1], remote_ts=[a1], esp_proposals=their_esp, options={"rekey_time": "0"}),
        Child(name="net2", local_ts=[b1], remote_ts=[a2], esp_proposals=their_esp, options={"rekey_time": "0"}),
    ]
    charon.load(Conn(version=2, local_addrs=[b.outer4], remote_addrs=[a.outer4], proposals=their_ike,
                     children=children, options={"rekey_time": "0", "dpd_delay": "2s"}, **conn_kw))  # type: ignore[arg-type]  # fmt: skip
    proc = a.popen([sys.executable, str(DRIVER), json.dumps(cfg)], env={"PYTHONPATH": str(SRC)},
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: list[dict[str, object]] = []
    try:
        if role == "responder":
            time.sleep(1.0)  # the driver's sockets are bound
            charon.initiate("net", "ike")
            charon.initiate("net2", "ike")
        snap = _read_until(proc, "snapshot", 40, seen)
        sas = charon.list_sas("ike")
        assert len(sas) == 1 and sas[0].state == "ESTABLISHED", f"{sas}\n{charon.log(80)}"
        theirs = {(f"{c.spi_out:08x}", f"{c.spi_in:08x}") for c in sas[0].children if c.state == "INSTALLED"}
        ours = {(str(c["in"]), str(c["out"])) for c in snap["children"]}  # type: ignore[attr-defined]
        assert ours == theirs and len(ours) == 2, f"ours {ours} charon {theirs}\n{seen}\n{charon.log(120)}"
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"driver failed: {err}"
    kinds = [e["type"] for e in seen]
    assert "NegotiationFailed" not in kinds, seen
    ike = [e for e in seen if e["type"] == "IkeSaEstablished"]
    assert len(ike) == 2 and ike[1]["rekey_of"] == ike[0]["sa_id"]
    assert ike[0]["nat_remote"] is True  # kernel-libipsec's faked NAT-D
    kids = [e for e in seen if e["type"] == "ChildSaEstablished"]
    assert len(kids) >= 4 and all(k["udp_encap"] for k in kids)
    assert any(k["pfs_group"] == pfs for k in kids)
    assert [e["reason"] for e in seen if e["type"] == "IkeSaDeleted"][-1] == "deleted locally"
    charon.wait_no_sas(timeout=10)
