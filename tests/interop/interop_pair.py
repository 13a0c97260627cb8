"""Shared pieces of the interop tests (not a test module): our iked in host a, charon in host b, both
configured from one `Tunnel`, with certificates from `harness.pki` when the tunnel signs.

    with interop_pair() as p:
        t = p.tunnel(auth="rsa", version=1)
        p.configure(t)
        p.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait")
        p.check_traffic(p.peer.wait_established("ike", "net").child("net"))
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from harness import require, require_root, require_tools
from harness.aixvpn import EspT, IkeT, Tunnel
from harness.iked import Iked
from harness.netns import Host, capture, two_hosts
from harness.pki import Pki, make_pki
from harness.strongswan import Charon, ChildSa, available

PSK = "interop matrix key 0123456789abcdef"

# Two suites per IKE version (IKEv1 has no AEAD for its own SA in strongSwan).
SUITES: dict[tuple[int, str], dict[str, Any]] = {
    (2, "gcm128-x25519"): {
        "ike": [IkeT("aes-gcm-16", 128, "hmac-sha2-256", 31, None)],
        "esp": [EspT("aes-gcm-16", 128)],
    },
    (2, "cbc256-sha256-modp2048"): {
        "ike": [IkeT("aes-cbc", 256, "hmac-sha2-256", 14, "hmac-sha2-256-128")],
        "esp": [EspT("aes-cbc", 256, "hmac-sha2-256-128")],
        "pfs": 19,
    },
    (1, "cbc128-sha256-ecp256+gcm128"): {
        "ike": [IkeT("aes-cbc", 128, "hmac-sha2-256", 19, "hmac-sha2-256-128")],
        "esp": [EspT("aes-gcm-16", 128)],
    },
    (1, "cbc256-sha256-modp2048+pfs"): {
        "ike": [IkeT("aes-cbc", 256, "hmac-sha2-256", 14, "hmac-sha2-256-128")],
        "esp": [EspT("aes-cbc", 256, "hmac-sha2-256-128")],
        "pfs": 14,
    },
}

# strongSwan's names for what it negotiated, to check both ends agree on the suite.
SS_ENCR = {"aes-gcm-16": "AES_GCM_16", "aes-cbc": "AES_CBC", "chacha20-poly1305": "CHACHA20_POLY1305"}
SS_DH = {14: "MODP_2048", 19: "ECP_256", 31: "CURVE_25519"}


def prerequisites() -> None:
    require_root()
    require_tools("ip", "ping", "tcpdump", "unshare")
    ok, why = available()
    require(ok, why)


@dataclass
class Pair:
    a: Host  # ours
    b: Host  # strongSwan
    ours: Iked
    peer: Charon
    workdir: Path
    _pki: dict[str, Pki]

    def pki(self, kind: str) -> Pki:
        """One CA with certificates for both gateways (SAN = outer address), made once per key kind."""
        if kind not in self._pki:
            self._pki[kind] = make_pki(
                self.workdir / kind, {"gw-ours": self.a.outer4, "gw-peer": self.b.outer4}, kind=kind
            )
        return self._pki[kind]

    def tunnel(self, auth: str = "psk", dn_ids: bool = False, **kw: Any) -> Tunnel:
        """Our view of the tunnel between the inside networks. With certificates the identities are
        the subject DNs (`dn_ids`) or the addresses (which the certificates carry as SANs)."""
        t = Tunnel(self.a.outer4, self.b.outer4, PSK, self.a.inner_net4, self.b.inner_net4, auth=auth, **kw)
        if auth == "psk":
            return t
        pki = self.pki(auth)
        ours, theirs = pki.hosts["gw-ours"], pki.hosts["gw-peer"]
        from dataclasses import replace

        return replace(
            t,
            cert=str(ours.cert),
            key=str(ours.key),
            ca=str(pki.ca_cert),
            peer_cert=str(theirs.cert),
            peer_key=str(theirs.key),
            local_id=_rfc4514(ours.cert) if dn_ids else None,
            remote_id=_rfc4514(theirs.cert) if dn_ids else None,
        )

    def configure(
        self,
        t: Tunnel,
        start_action: str = "none",
        options: dict[str, str] | None = None,
        child_options: dict[str, str] | None = None,
    ) -> None:
        self.ours.put(t.xml())
        self.peer.load(t.swapped().ss_conn(start_action, options, child_options))

    def our_tunnels(self) -> list[dict[str, Any]]:
        out = json.loads(self.ours.ike("cmd=list", "format=json").stdout)
        tunnels: list[dict[str, Any]] = out["tunnels"]
        return tunnels

    def establish(self, role: str, version: int) -> tuple[dict[str, Any], ChildSa]:
        """Bring the tunnel up with `role` ("ours" or "peer") initiating; returns (our phase 1 record
        with its phase2 list, strongSwan's child SA) after checking both ends agree."""
        if role == "ours":
            self.ours.ike("cmd=activate", "phase=2", "numlist=1", "wait")
            sa = self.peer.wait_established("ike", "net", timeout=10)
        else:
            self.peer.initiate("net", "ike", timeout=15)
            sa = self.peer.wait_established("ike", "net", timeout=10)
        assert sa.version == version
        assert sa.initiator == (role == "peer")
        child = sa.child("net")
        assert child is not None
        rec = wait_for(lambda: _established(self.our_tunnels()), 10, lambda: self.ours.log(60))
        assert rec["role"] == ("i" if role == "ours" else "r") and rec["version"] == version
        assert int(rec["spi_i"], 16) == sa.initiator_spi and int(rec["spi_r"], 16) == sa.responder_spi
        [p2] = [x for x in rec["phase2"] if x["state"] == "established"]
        assert (int(p2["spi_in"], 16), int(p2["spi_out"], 16)) == (child.spi_out, child.spi_in)
        return rec, child

    def check_traffic(self, child: ChildSa, count: int = 3) -> None:
        """A ping from each inside network to the other works, and on the wire between the gateways
        there is only IKE and ESP-in-UDP with this child's SPIs; no inside address in clear."""
        a, b = self.a, self.b
        with capture(a, "veth0", "not arp and not ip6") as cap:
            from_ours = a.ping(b.inner4, count=count, src=a.inner4)
            from_peer = b.ping(a.inner4, count=count, src=b.inner4)
        assert from_ours.returncode == 0, from_ours.stdout + "\n" + self.ours.log(40)
        assert from_peer.returncode == 0, from_peer.stdout + "\n" + self.peer.log(40)
        data = [p for p in cap.between(a.outer4, b.outer4) if p.kind not in ("ike", "natt-keepalive")]
        assert {p.kind for p in data} == {"esp-in-udp"}, cap.packets
        assert len(data) == 4 * count, cap.packets
        assert {p.spi for p in data} == {child.spi_in, child.spi_out}
        assert not [p for p in cap.packets if {p.src, p.dst} & {a.inner4, b.inner4}], "inside addresses in clear"
        assert {p.kind for p in cap.packets} <= {"esp-in-udp", "ike", "natt-keepalive"}, cap.packets


def _rfc4514(cert_path: Path) -> str:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


def _established(tunnels: list[dict[str, Any]]) -> dict[str, Any] | None:
    ups = [t for t in tunnels if t.get("state") == "established" and t.get("phase", 1) == 1]
    if len(ups) == 1 and any(x["state"] == "established" for x in ups[0].get("phase2", [])):
        return ups[0]
    return None


def wait_for(probe: Callable[[], Any], timeout: float, why: Callable[[], str], step: float = 0.2) -> Any:
    """Poll `probe` until it returns something truthy; fail with `why()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout}s\n{why()}")
        time.sleep(step)


@contextlib.contextmanager
def interop_pair(iked_args: list[str] | None = None, charon_conf: str = "") -> Iterator[Pair]:
    with (
        tempfile.TemporaryDirectory(prefix="iketest-pki-") as tmp,
        two_hosts() as (a, b),
        Iked(a, extra_args=iked_args) as ours,
        Charon(b, extra_conf=charon_conf) as peer,
    ):
        yield Pair(a, b, ours, peer, Path(tmp), {})
