"""Two iked hosts in network namespaces: `ike cmd=activate ... wait`, list, ping through, remove.

Every test here needs root and namespaces: under CI=true a missing prerequisite fails the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import require_root, require_tools
from harness.iked import Iked
from harness.netns import Host, two_hosts

PSK = "iked netns test key"

SIDE = """<?xml version="1.0" encoding="UTF-8"?>
<AIX_VPN Version="2.0">
  <IKEProtection IKE_ProtectionName="p1pol" IKE_Version="{version}" IKE_XCHGMode="{mode}"
                 IKE_AuthenticationMethod="Preshared_key" IKE_KeyRefreshSeconds="{p1life}"
                 IKE_DPDDelaySeconds="{dpd}" IKE_DPDAction="{dpd_action}">
    <IKETransform IKE_Encryption="aes-cbc" IKE_KeyLength="256" {integ}
                  IKE_PRF="hmac-sha2-256" IKE_DHGroup="{dh}"/>
  </IKEProtection>
  <IPSecProtection IPSec_ProtectionName="p2pol" IPSec_EncapsulationMode="Tunnel" IPSec_PFSGroup="{pfs}"
                   IPSec_KeyRefreshSeconds="{p2life}">
    <IPSecESPProtocol ESP_Encryption="{esp}" ESP_KeyLength="256" {esp_auth}/>
  </IPSecProtection>
  <IKETunnel IKE_TunnelName="gw" IKE_ProtectionRef="p1pol" IKE_Flags_AutoStart="{autostart}">
    <IKELocalIdentity><IPV4_Address Value="{my_gw}"/></IKELocalIdentity>
    <IKERemoteIdentity><IPV4_Address Value="{peer_gw}"/></IKERemoteIdentity>
  </IKETunnel>
  <IPSecTunnel IPSec_TunnelName="net" IKE_TunnelName="gw" IPSec_ProtectionRef="p2pol"
               IPSec_Flags_AutoStart="{autostart}">
    <IPSecLocalIdentity><IPV4_Subnet Value="{my_net}" NetMask="255.255.255.0"/></IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV4_Subnet Value="{peer_net}" NetMask="255.255.255.0"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IPSecTunnel IPSec_TunnelName="icmp" IKE_TunnelName="gw" IPSec_ProtectionRef="p2pol" IPSec_Flags_AutoStart="No">
    <IPSecLocalIdentity><IPV4_Address Value="{my_host}" Protocol="icmp"/></IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV4_Address Value="{peer_host}" Protocol="icmp"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IKEPresharedKey Value="{psk}">
    <PK_Identity><IPV4_Address Value="{peer_gw}"/></PK_Identity>
  </IKEPresharedKey>
</AIX_VPN>
"""


def side_xml(me: Host, peer: Host, version: int = 2, psk: str = PSK, dh: int = 19, **kw: Any) -> str:
    params: dict[str, Any] = {
        "version": version,
        "mode": "Main",
        "p1life": 28800,
        "p2life": 3600,
        "dh": dh,
        "pfs": "none",
        "esp": "aes-gcm-16",
        "esp_auth": "",
        "integ": 'IKE_Integrity="hmac-sha2-256-128"' if version == 2 else "",
        "autostart": "No",
        "dpd": 30,
        "dpd_action": "clear",
    }
    params.update(kw)
    return SIDE.format(
        my_gw=me.outer4,
        peer_gw=peer.outer4,
        my_net=me.inner_net4.split("/")[0],
        peer_net=peer.inner_net4.split("/")[0],
        my_host=me.inner4,
        peer_host=peer.inner4,
        psk=psk,
        **params,
    )


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    require_root()
    require_tools("ip", "ping")
    with two_hosts() as ab:
        yield ab


def listing(d: Iked, *args: str) -> dict[str, Any]:
    out = d.ike("cmd=list", "format=json", *args)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def engine_available(version: int) -> bool:
    import importlib

    try:
        mod = importlib.import_module(f"ike.proto.v{version}")
    except ImportError:
        return False
    return hasattr(mod, f"Ikev{version}Engine")


def need_engine(version: int) -> None:
    from harness import require

    require(engine_available(version), f"the IKEv{version} engine is not in this checkout yet")


@pytest.mark.parametrize("version", [1, 2])
def test_activate_wait_list_ping_remove(hosts: tuple[Host, Host], version: int) -> None:
    need_engine(version)
    a, b = hosts
    with Iked(a, dataplane="userspace") as ia, Iked(b, dataplane="userspace") as ib:
        ia.put(side_xml(a, b, version))
        ib.put(side_xml(b, a, version))
        assert a.ping(b.inner4, count=1, src=a.inner4).returncode != 0  # no tunnel, no route
        out = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
        assert re.search(r"phase 1 tunnel gw \(database tunnel 1\): established as active tunnel 1", out.stdout)
        assert re.search(r"phase 2 tunnel net \(database tunnel 1\): established as active tunnel 1", out.stdout)
        ping = a.ping(b.inner4, count=3, src=a.inner4)
        assert ping.returncode == 0, ping.stdout + ping.stderr + ia.log(80)

        la, lb = listing(ia), listing(ib)
        (t1,) = la["tunnels"]
        assert t1["state"] == "established" and t1["role"] == "i" and t1["version"] == version
        (c1,) = t1["phase2"]
        assert c1["state"] == "established" and c1["packets_out"] >= 3 and c1["packets_in"] >= 3
        (r1,) = lb["tunnels"]
        assert r1["role"] == "r" and r1["phase2"][0]["spi_in"] == c1["spi_out"]

        # concise and verbose text listings
        text = ia.ike("cmd=list").stdout
        assert re.search(r"^1\s+1\s+1\s+Active\s+Initiator\s+198\.18\.0\.1\s+198\.18\.0\.2", text, re.M), text
        assert re.search(r"^2\s+1\s+1\s+Active\s+Initiator\s+198\.19\.1\.0/24\s+198\.19\.2\.0/24", text, re.M), text
        verbose = ib.ike("cmd=list", "role=r", "verbose").stdout
        assert "Role:" in verbose and "Responder" in verbose and "packets in" in verbose

        # a second phase 2 shares the phase 1 SA
        out = ia.ike("cmd=activate", "phase=2", "numlist=2", "wait")
        assert "already active as active tunnel 1" in out.stdout and "established as active tunnel 2" in out.stdout
        la = listing(ia, "phase=1+")
        assert len(la["tunnels"]) == 1 and len(la["tunnels"][0]["phase2"]) == 2

        # activating what exists returns at once and says so
        out = ia.ike("cmd=activate", "phase=2", "numlist=1")
        assert "already active" in out.stdout

        # remove phase 2 tunnel 1 only: phase 1 and the other phase 2 (ICMP between the inside
        # hosts) stay and still carry the ping; the peer follows the delete
        ia.ike("cmd=remove", "phase=2", "numlist=1")
        time.sleep(0.5)
        la = listing(ia)
        assert la["tunnels"][0]["state"] == "established"
        assert [c["tunnel"] for c in la["tunnels"][0]["phase2"]] == [2]
        lb = listing(ib, "phase=2")
        assert [t["name"] for t in lb["tunnels"] if t["state"] == "established"] == ["icmp"]
        ping = a.ping(b.inner4, count=2, src=a.inner4)
        assert ping.returncode == 0, ping.stdout + ia.log(40)
        assert listing(ia, "phase=2", "numlist=2")["tunnels"][0]["packets_out"] >= 2
        ia.ike("cmd=remove", "phase=2", "numlist=2")
        time.sleep(0.3)
        assert a.ping(b.inner4, count=1, src=a.inner4).returncode != 0

        # unknown numbers are clear errors
        bad = ia.ike("cmd=remove", "phase=1", "numlist=9", check=False)
        assert bad.returncode != 0 and "no active phase 1 tunnel numbered 9" in bad.stderr

        ia.ike("cmd=remove", "all")
        assert listing(ia)["tunnels"] == []
        assert ia.alive() and ib.alive()


def test_errors_without_daemon_and_bad_numbers(hosts: tuple[Host, Host]) -> None:
    a, _b = hosts
    d = Iked(a, dataplane="none")
    try:
        r = d.ike("cmd=list", check=False)
        assert r.returncode == 3 and "iked is not running" in r.stderr
        d.start()
        r = d.ike("cmd=activate", "phase=2", "numlist=5", check=False)
        assert r.returncode == 1 and "no phase 2 tunnel number 5 in the database" in r.stderr
        r = d.ike("cmd=list", "numlist=4", check=False)
        assert r.returncode == 1 and "no active phase 1 tunnel number 4" in r.stderr
        assert d.alive()
    finally:
        d.stop()


def up(ia: Iked, ib: Iked, a: Host, b: Host, version: int, **kw: Any) -> None:
    ia.put(side_xml(a, b, version, **kw))
    ib.put(side_xml(b, a, version, **kw))
    ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")


def test_mismatch_fails_with_reason_and_both_offers(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    with Iked(a, dataplane="none") as ia, Iked(b, dataplane="none") as ib:
        ia.put(side_xml(a, b, 2, dh=19))
        ib.put(side_xml(b, a, 2, dh=14))
        r = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait", check=False)
        assert r.returncode == 1
        assert "phase 1 tunnel gw (database tunnel 1): failed" in r.stdout and "NO_PROPOSAL_CHOSEN" in r.stdout
        assert "we offered:" in r.stdout
        # the responder knows both sides' offers and shows them
        tun = listing(ib)["tunnels"]
        assert len(tun) == 1, tun
        t = tun[0]
        assert t["state"] == "failed" and t["role"] == "r"
        assert any("dh19" in o or "ecp256" in o for o in t["peer_offered"]), t
        assert any("dh14" in o or "modp2048" in o for o in t["offered"]), t
        text = ib.ike("cmd=list", "verbose").stdout
        assert "Peer offered:" in text and "We offered:" in text and "Failed" in text
        concise = ia.ike("cmd=list").stdout
        assert "Failed" in concise and "reason:" in concise
        assert ia.alive() and ib.alive()


def test_log_switch_autostart_and_garbage(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    ib = Iked(b, dataplane="userspace")
    ib.put(side_xml(b, a, 2))
    ia = Iked(a, dataplane="userspace", autostart=True, log_level="errors")
    ia.put(side_xml(a, b, 2, autostart="Yes"))
    try:
        ib.start()
        ia.start()  # autostart brings the tunnel up without any ike command
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tun = listing(ia)["tunnels"]
            if tun and tun[0]["state"] == "established" and tun[0]["phase2"]:
                break
            time.sleep(0.2)
        assert tun and tun[0]["phase2"][0]["state"] == "established", ia.log(40)
        assert "established" not in ia.log_path.read_text()  # level errors: no events logged

        # ike cmd=log: new level and file, tunnels untouched
        new_log = ia.workdir / "second.log"
        ia.conf.write_text(f"log_level = information\nlog_destination = {new_log}\n")
        out = ia.ike("cmd=log")
        assert f"logging at level information to {new_log}" in out.stdout
        ia.ike("cmd=activate", "phase=2", "numlist=2", "wait")
        assert "phase 2 tunnel 2 established" in new_log.read_text()
        assert listing(ia)["tunnels"][0]["tunnel"] == 1  # the first tunnel was not disturbed
        # SIGHUP does the same (systemctl reload)
        third = ia.workdir / "third.log"
        ia.conf.write_text(f"log_level = events\nlog_destination = {third}\n")
        assert ia.proc is not None
        os.kill(ia.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not (third.exists() and "SIGHUP: logging level events" in third.read_text()):
            assert time.monotonic() < deadline, ia.log(20)
            time.sleep(0.1)
        # a broken IKE_CONF is refused and changes nothing
        ia.conf.write_text("log_level = loud\n")
        bad = ia.ike("cmd=log", check=False)
        assert bad.returncode == 1 and "log level 'loud'" in bad.stderr and "logging unchanged" in bad.stderr

        # garbage at both ports from the peer host: dropped, daemon and tunnels fine
        junk = (
            "import socket, os\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(({b.outer4!r}, 0))\n"
            "for n in range(300):\n"
            "    for port in (500, 4500):\n"
            f"        s.sendto(os.urandom(n % 90), ({a.outer4!r}, port))\n"
            f"        s.sendto(bytes(4) + os.urandom(n % 90), ({a.outer4!r}, port))\n"
        )
        b.run([sys.executable, "-c", junk])
        time.sleep(0.3)
        assert ia.alive() and ib.alive()
        ping = a.ping(b.inner4, count=2, src=a.inner4)
        assert ping.returncode == 0, ia.log(40)
        assert [t["state"] for t in listing(ia)["tunnels"]] == ["established"]
    finally:
        ia.stop()
        ib.stop()


def test_remid_ipaddr_namelist_and_phase1_only(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    with Iked(a, dataplane="none") as ia, Iked(b, dataplane="none") as ib:
        ia.put(side_xml(a, b, 2))
        ib.put(side_xml(b, a, 2))
        out = ia.ike("cmd=activate", "phase=1", f"remid={b.outer4}", "wait").stdout
        assert "phase 1 tunnel gw (database tunnel 1): established" in out and "phase 2" not in out
        assert listing(ia)["tunnels"][0]["phase2"] == []
        out = ia.ike("cmd=activate", "phase=2", "remid=198.19.2.0,255.255.255.0", "wait").stdout
        assert "already active" in out and "phase 2 tunnel net (database tunnel 1): established" in out
        out = ia.ike("cmd=activate", "phase=2", "namelist=icmp", "wait").stdout
        assert "phase 2 tunnel icmp (database tunnel 2): established" in out
        out = ia.ike("cmd=activate", "phase=2", f"ipaddr={a.outer4},{b.outer4}").stdout
        assert out.count("already active") == 3
        bad = ia.ike("cmd=activate", "remid=nobody.example", check=False)
        assert bad.returncode == 1 and "matches no phase 1 ID, phase 2 ID or group" in bad.stderr
        # list filters: role, phase 2 with its phase 1, numlist
        assert listing(ia, "role=r")["tunnels"] == []
        two = listing(ia, "phase=2", "numlist=2")["tunnels"]
        assert [t["name"] for t in two] == ["icmp"] and two[0]["phase1"]["tunnel"] == 1
        text = ib.ike("cmd=list", "phase=2").stdout
        assert text.count("Responder") == 4  # a phase 1 line before each of the two phase 2 lines


@pytest.mark.parametrize("version", [1, 2])
def test_phase1_removal_children_run_on_unrefreshed(hosts: tuple[Host, Host], version: int) -> None:
    need_engine(version)
    a, b = hosts
    with Iked(a) as ia, Iked(b) as ib:
        up(ia, ib, a, b, version)
        ia.ike("cmd=remove", "phase=1", "all")
        time.sleep(0.3)
        tun = listing(ia)["tunnels"]
        assert [(t.get("phase"), t["state"], t["refresh"]) for t in tun] == [(2, "established", False)]
        ping = a.ping(b.inner4, count=2, src=a.inner4)
        assert ping.returncode == 0, ia.log(40)
        assert "its phase 1 was removed" in ia.ike("cmd=list", "verbose").stdout


def test_peer_vanishes_dpd_clears_and_daemon_goes_on(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    with Iked(a, extra_args=["--retransmit-timeout", "0.5", "--retransmit-tries", "2"]) as ia:
        ib = Iked(b)
        try:
            ib.start()
            up(ia, ib, a, b, 2, dpd=1)
            assert ib.proc is not None
            ib.proc.kill()  # no deletes: the peer just disappears
            ib.proc.wait(5)
            deadline = time.monotonic() + 40
            state = "established"
            while time.monotonic() < deadline:
                tun = listing(ia)["tunnels"]
                state = tun[0]["state"] if tun else "gone"
                if state != "established":
                    break
                time.sleep(0.5)
            assert state in ("deleted", "gone"), ia.log(40)
            assert ia.alive()
            if tun:
                assert "unreachable" in (tun[0]["last_error"] or "") or "DPD" in (tun[0]["last_error"] or "")
            r = ia.ike("cmd=activate", "phase=2", "numlist=1", "wait", check=False)
            assert r.returncode == 1 and "failed" in r.stdout
            assert ia.alive()
        finally:
            ib.stop()


def test_peer_restart_initial_contact_replaces_stale_tunnel(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    with Iked(a) as ia:
        ib = Iked(b)
        try:
            ib.start()
            up(ia, ib, a, b, 2)
            assert ib.proc is not None
            ib.proc.kill()  # crash: no deletes reach a
            ib.proc.wait(5)
            ib.stop()
            ib = Iked(b)
            ib.put(side_xml(b, a, 2))
            ib.start()
            ib.ike("cmd=activate", "phase=2", "numlist=1", "wait")
            tun = listing(ia)["tunnels"]
            live = [t for t in tun if t["state"] == "established"]
            assert [t["role"] for t in live] == ["r"], tun
            stale = [t for t in tun if t["role"] == "i"]
            assert not stale or "INITIAL_CONTACT" in (stale[0]["last_error"] or ""), stale
            ping = a.ping(b.inner4, count=2, src=a.inner4)
            assert ping.returncode == 0, ia.log(40)
        finally:
            ib.stop()


SIDE6 = """<?xml version="1.0" encoding="UTF-8"?>
<AIX_VPN Version="2.0">
  <IKEProtection IKE_ProtectionName="p1pol" IKE_Version="2" IKE_AuthenticationMethod="Preshared_key">
    <IKETransform IKE_Encryption="aes-gcm-16" IKE_KeyLength="256" IKE_PRF="hmac-sha2-256" IKE_DHGroup="31"/>
  </IKEProtection>
  <IPSecProtection IPSec_ProtectionName="p2pol" IPSec_EncapsulationMode="Tunnel" IPSec_PFSGroup="none">
    <IPSecESPProtocol ESP_Encryption="chacha20-poly1305" ESP_KeyLength="256"/>
  </IPSecProtection>
  <IKETunnel IKE_TunnelName="gw6" IKE_ProtectionRef="p1pol">
    <IKELocalIdentity><IPV6_Address Value="{my_gw}"/></IKELocalIdentity>
    <IKERemoteIdentity><IPV6_Address Value="{peer_gw}"/></IKERemoteIdentity>
  </IKETunnel>
  <IPSecTunnel IPSec_TunnelName="net6" IKE_TunnelName="gw6" IPSec_ProtectionRef="p2pol">
    <IPSecLocalIdentity><IPV6_Subnet Value="{my_net}" NetMask="64"/></IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV6_Subnet Value="{peer_net}" NetMask="64"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IKEPresharedKey Value="{psk}">
    <PK_Identity><IPV6_Address Value="{peer_gw}"/></PK_Identity>
  </IKEPresharedKey>
</AIX_VPN>
"""


def side6(me: Host, peer: Host) -> str:
    assert me.outer6 and peer.outer6 and me.inner_net6 and peer.inner_net6
    return SIDE6.format(
        my_gw=me.outer6,
        peer_gw=peer.outer6,
        my_net=me.inner_net6.split("/")[0],
        peer_net=peer.inner_net6.split("/")[0],
        psk=PSK,
    )


def test_ipv6_outer_and_inner() -> None:
    require_root()
    require_tools("ip", "ping")
    need_engine(2)
    with two_hosts(v6=True) as (a, b), Iked(a) as ia, Iked(b) as ib:
        ia.put(side6(a, b))
        ib.put(side6(b, a))
        out = ia.ike("cmd=activate", "remid=" + str(b.outer6), "wait").stdout
        assert "phase 2 tunnel net6 (database tunnel 1): established" in out
        assert b.inner6 and a.inner6
        ping = a.run(["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", a.inner6, b.inner6], check=False)
        assert ping.returncode == 0, ping.stdout + ia.log(30)
        (t,) = listing(ia)["tunnels"]
        assert t["remote"] == b.outer6 and t["phase2"][0]["remote_ts"] == [b.inner_net6]


@pytest.mark.parametrize("version", [1, 2])
def test_rekeys_keep_tunnel_numbers_and_traffic(hosts: tuple[Host, Host], version: int) -> None:
    need_engine(version)
    a, b = hosts
    with Iked(a) as ia, Iked(b) as ib:
        up(ia, ib, a, b, version, p1life=12, p2life=5)
        (t,) = listing(ia)["tunnels"]
        spi_before = t["phase2"][0]["spi_in"]
        deadline = time.monotonic() + 25
        rekeyed = False
        while time.monotonic() < deadline and not rekeyed:
            time.sleep(0.5)
            tun = listing(ia)["tunnels"]
            live = [x for x in tun if x["state"] == "established"]
            rekeyed = (
                len(live) == 1
                and live[0]["tunnel"] == 1
                and live[0]["rekeys"] >= 1
                and live[0]["phase2"][0]["tunnel"] == 1
                and live[0]["phase2"][0]["rekeys"] >= 1
            )
        assert rekeyed, json.dumps(listing(ia), indent=1) + ia.log(60)
        child = listing(ia)["tunnels"][0]["phase2"][0]
        assert child["spi_in"] != spi_before and child["state"] == "established", ia.log(60)
        # The responder too: one tunnel renewed in place (IKEv1 renews phase 1 with a new main mode,
        # which must not list a new tunnel and orphan the phase 2 under the old one).
        tb = listing(ib)["tunnels"]
        assert len(tb) == 1, json.dumps(tb, indent=1) + ib.log(60)
        (rb,) = tb
        assert (rb.get("phase", 1), rb["tunnel"], rb["state"], rb["role"]) == (1, 1, "established", "r"), rb
        assert rb["rekeys"] >= 1, json.dumps(rb, indent=1)
        assert [(c["tunnel"], c["state"], c["refresh"]) for c in rb["phase2"]] == [(1, "established", True)], rb
        assert rb["phase2"][0]["rekeys"] >= 1, json.dumps(rb, indent=1)
        ping = a.ping(b.inner4, count=3, src=a.inner4)
        assert ping.returncode == 0, ia.log(40)
        assert ia.alive() and ib.alive()


def test_phase1_removal_v2_ike_sa_goes_with_the_last_child(hosts: tuple[Host, Host]) -> None:
    need_engine(2)
    a, b = hosts
    with Iked(a) as ia, Iked(b) as ib:
        up(ia, ib, a, b, 2, p1life=600, p2life=4)
        ia.ike("cmd=remove", "phase=1", "numlist=1")
        assert [t.get("phase") for t in listing(ia)["tunnels"]] == [2]  # phase 1 unlisted, phase 2 runs
        assert listing(ib)["tunnels"][0]["state"] == "established"  # the peer still has both
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            tb = listing(ib)["tunnels"]
            if tb and tb[0]["state"] != "established":
                break
            time.sleep(0.3)
        ta = listing(ia)["tunnels"]
        assert not [t for t in ta if t["state"] == "established"], ta
        assert ta[0]["rekeys"] == 0  # it was not refreshed
        assert tb[0]["state"] == "deleted", json.dumps(tb, indent=1) + ib.log(30)
