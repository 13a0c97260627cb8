"""`ikedb`: the examples import, put -> get -> put is exact, bad files change nothing, swapped export."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ike import certgen
from ike.cli import ikedb
from ike.db.model import Definitions, Phase1Spec, Phase2Spec, PresharedKey
from ike.db.store import Store
from ike.db.xmlio import XmlError, read_definitions, swap, write_definitions
from ike.policy import (
    DataManagementPolicy,
    EspProposal,
    Identity,
    IkeProposal,
    KeyManagementPolicy,
    TrafficSelector,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FULL = """<?xml version="1.0"?>
<AIX_VPN Version="2.0">
  <IKEProtection IKE_ProtectionName="v1-aggr" IKE_Version="1" IKE_XCHGMode="Aggressive"
      IKE_KeyRefreshMinutes="480" IKE_KeyRefreshKB="100000" IKE_DPDDelaySeconds="0">
    <IKETransform IKE_Encryption="aes-cbc" IKE_KeyLength="128" IKE_PRF="hmac-sha1" IKE_DHGroup="14"/>
    <IKETransform IKE_Encryption="3des-cbc" IKE_PRF="hmac-sha2-256" IKE_Integrity="hmac-sha2-256-128" IKE_DHGroup="14"/>
  </IKEProtection>
  <IKEProtection IKE_ProtectionName="v2-rsa" IKE_AuthenticationMethod="RSA_signature" IKE_DPDAction="restart">
    <IKETransform IKE_Encryption="aes-gcm-16" IKE_KeyLength="128" IKE_PRF="hmac-sha2-512" IKE_DHGroup="32"/>
  </IKEProtection>
  <IPSecProtection IPSec_ProtectionName="ah-only" IPSec_EncapsulationMode="Transport" IPSec_PFSGroup="19">
    <IPSecAHProtocol AH_Authentication="hmac-sha2-512-256" AH_ExtendedSeqNum="Yes"/>
    <IPSecAHProtocol AH_Authentication="hmac-sha1-96"/>
  </IPSecProtection>
  <IPSecProtection IPSec_ProtectionName="esp" IPSec_KeyRefreshKB="4096">
    <IPSecESPProtocol ESP_Encryption="aes-cbc" ESP_KeyLength="192" ESP_Authentication="hmac-sha2-384-192"/>
  </IPSecProtection>
  <IKETunnel IKE_TunnelName="user" IKE_TunnelNumber="5" IKE_ProtectionRef="v1-aggr" IKE_Flags_AutoStart="Yes"
      IKE_RemoteAddress="peer.example">
    <IKELocalIdentity><User_FQDN Value="alice@a.example"/></IKELocalIdentity>
    <IKERemoteIdentity><KEY_ID Value="opaque-key-id"/></IKERemoteIdentity>
  </IKETunnel>
  <IKETunnel IKE_TunnelName="dn6" IKE_ProtectionRef="v2-rsa" IKE_LocalAddress="2001:db8:0:0::1"
      IKE_RemoteAddress="2001:db8::2" IKE_CertificateFile="/etc/ike/host.pem" IKE_PrivateKeyFile="/etc/ike/host.key"
      IKE_CAFile="/etc/ike/ca.pem">
    <IKELocalIdentity><X500DN Value="CN=a,O=Example\\, Inc."/></IKELocalIdentity>
    <IKERemoteIdentity><IPV6_Address Value="2001:DB8::2"/></IKERemoteIdentity>
  </IKETunnel>
  <IPSecTunnel IPSec_TunnelName="ports" IKE_TunnelName="user" IPSec_ProtectionRef="ah-only" IPSec_TunnelNumber="9">
    <IPSecLocalIdentity>
      <IPV4_Address_Range From="198.19.0.5" To="198.19.0.9" Protocol="udp" Port="500-510"/>
    </IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV4_Subnet Value="198.19.8.0" NetMask="255.255.248.0" Protocol="icmp"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IPSecTunnel IPSec_TunnelName="v6" IKE_TunnelName="dn6" IPSec_ProtectionRef="esp" IPSec_Flags_AutoStart="Yes">
    <IPSecLocalIdentity><IPV6_Subnet Value="2001:db8:1::" NetMask="48" Protocol="47"/></IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV6_Address Value="2001:db8:2::7" Protocol="tcp" Port="22"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IKEGroup IKE_GroupName="branch">
    <IKEGroupMember Value="198.18.0.2"/>
    <IKEGroupMember Value="gw.branch.example"/>
  </IKEGroup>
  <IKEPresharedKey Value="00ff10 20" Format="ASCII">
    <PK_Identity><KEY_ID Value="opaque-key-id"/></PK_Identity>
  </IKEPresharedKey>
  <IKEPresharedKey Value="00FF7f" Format="Hex"><PK_Identity><FQDN Value="b.example"/></PK_Identity></IKEPresharedKey>
</AIX_VPN>
"""


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "db" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(path))
    return path


def put(tmp_path: Path, text: str, *flags: str, name: str = "in.xml") -> int:
    f = tmp_path / name
    f.write_text(text)
    return ikedb.main(["put", *flags, str(f)])


def get(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    capsys.readouterr()
    assert ikedb.main(["get", *flags]) == 0
    return capsys.readouterr().out


def snapshot(path: Path) -> Definitions:
    with Store(path) as s:
        return s.definitions()


def test_examples_import(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = tmp_path / "examples"
    shutil.copytree(EXAMPLES, ex, ignore=shutil.ignore_patterns("*.pem", "*.key"))
    # The interpreter running the tests has ike installed; python3 on PATH need not.
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["sh", str(ex / "make-certs.sh")], check=True, capture_output=True, env=env)
    files = sorted(ex.glob("*.xml"))
    assert len(files) >= 4
    for f in files:
        assert ikedb.main(["put", str(f)]) == 0, capsys.readouterr().err
        assert "does not exist" not in capsys.readouterr().err
    with Store(db) as s:
        names = {t.name for t in s.phase1_tunnels()}
        assert {"a-to-b", "site-a-b", "a-to-b-cert", "v6-site-a-b"} <= names
        cert = next(t for t in s.phase1_tunnels() if t.name == "a-to-b-cert")
        # Relative certificate paths are resolved against the XML file and the files are real.
        assert cert.credentials.cert_file == str(ex / "certs" / "gw-a.example.pem")
        assert Path(cert.credentials.key_file or "").is_file()
        hosts = next(t for t in s.phase2_tunnels() if t.name == "a-to-b-hosts")
        assert str(hosts.local_ts) == "198.18.0.1" and hosts.policy.mode == "transport"
        psk = next(t for t in s.phase1_tunnels() if t.name == "site-a-b")
        assert psk.credentials.psk == bytes.fromhex("6b3e1c0d9a7f4e2b8c5d0a1f3e7b9c2d")


def test_put_get_put_round_trip(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert put(tmp_path, FULL) == 0
    first = snapshot(db)
    xml1 = get(capsys)
    # Into a fresh database: identical content, numbers included.
    other = tmp_path / "other.db"
    f = tmp_path / "export.xml"
    f.write_text(xml1)
    with Store(other) as s:
        defs, _ = read_definitions(f.read_bytes(), str(f))
        s.put(defs)
        assert s.definitions() == first
        assert write_definitions(s.definitions()) == xml1
    with Store(db) as s:
        t = {x.name: x for x in s.phase1_tunnels()}
        assert t["user"].number == 5 and t["user"].credentials.psk == b"00ff10 20"
        assert t["dn6"].local_addr == "2001:db8::1" and t["dn6"].remote_id.value == "2001:db8::2"
        assert s.phase2_by_name("ports").number == 9  # type: ignore[union-attr]
        assert s.phase2_by_name("v6").remote_ts.port_start == 22  # type: ignore[union-attr]
        assert s.km_policies()[1].lifetime_s == 480 * 60
    assert 'Value="00ff7f"' in xml1 and 'Format="Hex"' in xml1
    # Putting the export back over the same database needs -F, and then changes nothing.
    assert ikedb.main(["put", str(f)]) == 1
    assert "already in the database; use -F" in capsys.readouterr().err
    assert ikedb.main(["put", "-F", str(f)]) == 0
    assert snapshot(db) == first


def test_aix_flag_spelling(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.xml"
    f.write_text(FULL)
    assert ikedb.main(["-p", str(f)]) == 0
    assert ikedb.main(["-pF", str(f)]) == 0
    capsys.readouterr()
    assert ikedb.main(["-g", "-t", "IKETunnel", "-n", "dn6"]) == 0
    out = capsys.readouterr().out
    assert 'IKE_TunnelName="dn6"' in out and "IPSecTunnel" not in out and "IKEProtection" not in out
    assert ikedb.main(["-gr", "-t", "IPSecTunnel", "-n", "v6"]) == 0
    out = capsys.readouterr().out
    # -r brings what the tunnel needs: its phase 1 tunnel and both protections, not the others.
    assert 'IKE_TunnelName="dn6"' in out and 'IKE_ProtectionName="v2-rsa"' in out
    assert 'IPSec_ProtectionName="esp"' in out and "v1-aggr" not in out and 'IKE_TunnelName="user"' not in out
    assert ikedb.main(["-d", "-t", "IPSecTunnel", "-n", "v6"]) == 0
    with Store(db) as s:
        assert s.phase2_by_name("v6") is None
    assert ikedb.main(["get", "-t", "IKETunnel", "-n", "nope"]) == 1
    assert "no IKETunnel named 'nope'" in capsys.readouterr().err


BAD = [
    ("<AIX_VPN>\n<IKEProtection", 2, "not well-formed XML"),
    ('<!DOCTYPE x [<!ENTITY a "b">]>\n<AIX_VPN/>', 1, "DOCTYPE"),
    (
        '<?xml version="1.0"?>\n<!DOCTYPE AIX_VPN [\n<!ENTITY a "aaaaaaaaaa">\n<!ENTITY b "&a;&a;&a;&a;&a;&a;">\n'
        ']>\n<AIX_VPN><IKEGroup IKE_GroupName="&b;"/></AIX_VPN>',
        2,
        "internal subset",
    ),
    (
        '<!DOCTYPE AIX_VPN SYSTEM "ike.dtd" []>\n<AIX_VPN/>',
        1,
        "internal subset",
    ),
    # An external DTD is ignored, so it declares nothing: an entity reference is still an error, not
    # silently an empty value.
    (
        '<!DOCTYPE AIX_VPN SYSTEM "ike.dtd">\n<AIX_VPN>\n<IKEGroup IKE_GroupName="g">'
        '<IKEGroupMember Value="&peer;"/></IKEGroup></AIX_VPN>',
        3,
        "undefined entity",
    ),
    ("<VPN/>", 1, "document element must be <AIX_VPN>"),
    ("<AIX_VPN>\n\n<Bogus/></AIX_VPN>", 3, "<Bogus> is not an ikedb element"),
    (
        "<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p' IKE_Colour='red'>"
        "<IKETransform IKE_Encryption='aes-cbc' IKE_KeyLength='128' IKE_Integrity='hmac-sha1-96' IKE_PRF='hmac-sha1' "
        "IKE_DHGroup='14'/></IKEProtection></AIX_VPN>",
        2,
        "unknown attribute IKE_Colour",
    ),
    (
        "<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p'>\n<IKETransform IKE_Encryption='rot13' IKE_PRF='hmac-sha1' "
        "IKE_DHGroup='14'/></IKEProtection></AIX_VPN>",
        3,
        "unknown encryption algorithm 'rot13'",
    ),
    (
        "<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p'>\n<IKETransform IKE_Encryption='aes-cbc' IKE_PRF='hmac-sha1' "
        "IKE_DHGroup='14' IKE_Integrity='hmac-sha1-96'/></IKEProtection></AIX_VPN>",
        3,
        "give IKE_KeyLength",
    ),
    ("<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p'/></AIX_VPN>", 2, "needs at least one <IKETransform>"),
    ("<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p' IKE_Version='3'/></AIX_VPN>", 2, "IKE_Version='3'"),
    (
        "<AIX_VPN>\n<IPSecProtection IPSec_ProtectionName='q' IPSec_PFSGroup='7'>"
        "<IPSecESPProtocol ESP_Encryption='aes-gcm-16' ESP_KeyLength='128'/></IPSecProtection></AIX_VPN>",
        2,
        "unknown DH group",
    ),
    (
        "<AIX_VPN>\n<IPSecProtection IPSec_ProtectionName='q'><IPSecESPProtocol ESP_Encryption='aes-gcm-16' "
        "ESP_KeyLength='128'/>\n<IPSecAHProtocol AH_Authentication='hmac-sha1-96'/></IPSecProtection></AIX_VPN>",
        2,
        "mixes <IPSecESPProtocol> and <IPSecAHProtocol>",
    ),
    (
        "<AIX_VPN>\n<IKETunnel IKE_TunnelName='t' IKE_ProtectionRef='ikev2-aes256-sha256'>"
        "<IKELocalIdentity><IPV4_Address Value='198.18.0.300'/></IKELocalIdentity>"
        "<IKERemoteIdentity><FQDN Value='b.example'/></IKERemoteIdentity></IKETunnel></AIX_VPN>",
        2,
        "is not an IP address",
    ),
    (
        "<AIX_VPN>\n<IKETunnel IKE_TunnelName='t' IKE_ProtectionRef='ikev2-aes256-sha256'>"
        "<IKELocalIdentity><IPV4_Address Value='198.18.0.1'/></IKELocalIdentity>"
        "<IKERemoteIdentity><FQDN Value='b.example'/></IKERemoteIdentity></IKETunnel></AIX_VPN>",
        2,
        "no remote address",
    ),
    (
        "<AIX_VPN>\n<IKETunnel IKE_TunnelName='t' IKE_ProtectionRef='missing'>"
        "<IKELocalIdentity><IPV4_Address Value='198.18.0.1'/></IKELocalIdentity>"
        "<IKERemoteIdentity><IPV4_Address Value='198.18.0.9'/></IKERemoteIdentity></IKETunnel></AIX_VPN>",
        2,
        "IKEProtection 'missing' is neither in the file nor in the database",
    ),
    (
        "<AIX_VPN>\n<IPSecTunnel IPSec_TunnelName='n' IKE_TunnelName='a-to-b' IPSec_ProtectionRef='esp-gcm-transport'>"
        "<IPSecLocalIdentity><IPV4_Subnet Value='198.19.1.0' NetMask='255.0.255.0'/></IPSecLocalIdentity>"
        "<IPSecRemoteIdentity><IPV4_Address Value='198.19.2.1'/></IPSecRemoteIdentity></IPSecTunnel></AIX_VPN>",
        2,
        "NetMask='255.0.255.0' is not a prefix length or a contiguous netmask",
    ),
    (
        "<AIX_VPN>\n<IPSecTunnel IPSec_TunnelName='n' IKE_TunnelName='a-to-b' IPSec_ProtectionRef='esp-gcm-transport'>"
        "<IPSecLocalIdentity><IPV4_Address_Range From='198.19.1.9' To='198.19.1.1'/></IPSecLocalIdentity>"
        "<IPSecRemoteIdentity><IPV6_Address Value='2001:db8::1'/></IPSecRemoteIdentity></IPSecTunnel></AIX_VPN>",
        2,
        "reversed",
    ),
    (
        "<AIX_VPN>\n<IPSecTunnel IPSec_TunnelName='n' IKE_TunnelName='a-to-b' IPSec_ProtectionRef='esp-gcm-transport'>"
        "<IPSecLocalIdentity><IPV4_Address Value='198.19.1.9' Port='80'/></IPSecLocalIdentity>"
        "<IPSecRemoteIdentity><IPV4_Address Value='198.19.2.1'/></IPSecRemoteIdentity></IPSecTunnel></AIX_VPN>",
        2,
        "Port needs Protocol",
    ),
    (
        "<AIX_VPN>\n<IPSecTunnel IPSec_TunnelName='n' IKE_TunnelName='a-to-b' IPSec_ProtectionRef='esp-gcm-transport'>"
        "<IPSecLocalIdentity><IPV4_Address Value='2001:db8::1'/></IPSecLocalIdentity>"
        "<IPSecRemoteIdentity><IPV4_Address Value='198.19.2.1'/></IPSecRemoteIdentity></IPSecTunnel></AIX_VPN>",
        2,
        "use the IPV6_ element",
    ),
    (
        "<AIX_VPN>\n<IPSecTunnel IPSec_TunnelName='n' IKE_TunnelName='nowhere' "
        "IPSec_ProtectionRef='esp-gcm-transport'/></AIX_VPN>",
        2,
        "needs <IPSecLocalIdentity>",
    ),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='zz' Format='Hex'><PK_Identity><FQDN Value='x.example'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        2,
        "not hexadecimal",
    ),
    ("<AIX_VPN>\n<IKEPresharedKey Value='k'/></AIX_VPN>", 2, "needs <PK_Identity>"),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='k'><PK_Identity><IPV4_Address Value='198.18.0.2'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        2,
        "already in the database; use -F",
    ),
    ("<AIX_VPN>\n<IKEGroup IKE_GroupName='g'/></AIX_VPN>", 2, "at least one member"),
    # A member naming a group stands for its members; a chain back to the group would never end.
    (
        "<AIX_VPN>\n<IKEGroup IKE_GroupName='g'><IKEGroupMember Value='g'/></IKEGroup></AIX_VPN>",
        2,
        "contains itself (g -> g)",
    ),
    (
        "<AIX_VPN>\n<IKEGroup IKE_GroupName='ga'><IKEGroupMember Value='198.18.0.2'/>"
        "<IKEGroupMember Value='gb'/></IKEGroup>\n"
        "<IKEGroup IKE_GroupName='gb'><IKEGroupMember Value='ga'/></IKEGroup></AIX_VPN>",
        2,
        "contains itself (ga -> gb -> ga)",
    ),
    # Identities are parsed as what their type says they are; group members as remote IDs.
    (
        "<AIX_VPN>\n<IKEGroup IKE_GroupName='g'>\n<IKEGroupMember Value='198.18.0.2'/>\n"
        "<IKEGroupMember Value='not an id !!'/></IKEGroup></AIX_VPN>",
        4,
        "<IKEGroupMember> 'not an id !!' is not a remote ID",
    ),
    (
        "<AIX_VPN>\n<IKEGroup IKE_GroupName='g'>\n<IKEGroupMember Value='198.18.0.300'/></IKEGroup></AIX_VPN>",
        3,
        "'198.18.0.300' is not an IP address",
    ),
    (
        "<AIX_VPN>\n<IKETunnel IKE_TunnelName='t' IKE_ProtectionRef='ikev2-aes256-sha256' "
        "IKE_RemoteAddress='198.18.0.9'><IKELocalIdentity><IPV4_Address Value='198.18.0.1'/></IKELocalIdentity>\n"
        "<IKERemoteIdentity><FQDN Value='bad name!'/></IKERemoteIdentity></IKETunnel></AIX_VPN>",
        3,
        "<FQDN> FQDN identity 'bad name!' is not a host name",
    ),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='k'>\n<PK_Identity><FQDN Value='198.18.0.300'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        3,
        "FQDN identity '198.18.0.300' is not a host name",
    ),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='k'>\n<PK_Identity><User_FQDN Value='al ice@a.example'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        3,
        "user FQDN identity 'al ice@a.example'",
    ),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='k'>\n<PK_Identity><X500DN Value='CN=a,O=Example, Inc.'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        3,
        "is not a distinguished name",
    ),
    (
        "<AIX_VPN>\n<IKEPresharedKey Value='k'>\n<PK_Identity><KEY_ID Value='0xnothex'/></PK_Identity>"
        "</IKEPresharedKey></AIX_VPN>",
        3,
        "not hexadecimal after 0x",
    ),
    (
        "<AIX_VPN>\n<IKETunnel IKE_TunnelName='t' IKE_ProtectionRef='ikev2-aes256-sha256' "
        "IKE_RemoteAddress='198.18.0.300'><IKELocalIdentity><IPV4_Address Value='198.18.0.1'/></IKELocalIdentity>"
        "<IKERemoteIdentity><FQDN Value='b.example'/></IKERemoteIdentity></IKETunnel></AIX_VPN>",
        2,
        "remote address: '198.18.0.300' is neither an IP address nor a host name",
    ),
    ("<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p'>text</IKEProtection></AIX_VPN>", 2, "unexpected text"),
    ("<AIX_VPN/>", 0, "no entries"),
]


@pytest.mark.parametrize(("xml", "line", "why"), BAD)
def test_bad_files_change_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], xml: str, line: int, why: str
) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    before = snapshot(db)
    raw = db.read_bytes()
    # A good entry in the same file must not be written either.
    good = "<IKEGroup IKE_GroupName='fresh'><IKEGroupMember Value='198.18.0.77'/></IKEGroup>"
    text = xml.replace("</AIX_VPN>", good + "</AIX_VPN>", 1) if "</AIX_VPN>" in xml and "DOCTYPE" not in xml else xml
    capsys.readouterr()
    assert put(tmp_path, text) == 1
    err = capsys.readouterr().err
    assert why in err, err
    if line:
        assert f"in.xml:{line}: " in err, err
    assert snapshot(db) == before
    assert db.read_bytes() == raw


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = (
        "<AIX_VPN>\n<IKEProtection IKE_ProtectionName='p' IKE_Version='9'><IKETransform IKE_Encryption='x' "
        "IKE_PRF='y' IKE_DHGroup='14'/></IKEProtection>\n<Nope/>\n<IKEGroup IKE_GroupName='g'/></AIX_VPN>"
    )
    with pytest.raises(XmlError) as e:
        read_definitions(text.encode(), "f.xml", tmp_path)
    lines = [line for line, _ in e.value.problems]
    assert lines == sorted(lines) and {2, 3} <= set(lines)


def test_swapped_export_configures_the_peer(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "subnet-to-subnet-psk.xml")]) == 0
    a = snapshot(db)
    exported = tmp_path / "for-b.xml"
    assert ikedb.main(["get", "-s", "-o", str(exported)]) == 0
    assert exported.stat().st_mode & 0o077 == 0
    # On the peer: its own database.
    b_db = tmp_path / "b" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(b_db))
    assert ikedb.main(["put", str(exported)]) == 0
    with Store(b_db) as s:
        (t1,) = s.phase1_tunnels()
        assert (t1.local_id.value, t1.remote_id.value) == ("198.18.1.2", "198.18.1.1")
        assert (t1.local_addr, t1.remote_addr) == ("198.18.1.2", "198.18.1.1")
        # gw-b must find the key under gw-a's identity.
        assert t1.credentials.psk == bytes.fromhex("6b3e1c0d9a7f4e2b8c5d0a1f3e7b9c2d")
        net = s.phase2_by_name("net-a-b")
        assert net is not None and str(net.local_ts) == "198.19.2.0/24" and str(net.remote_ts) == "198.19.1.0/24"
        web = s.phase2_by_name("web-a-b")
        assert web is not None and str(web.local_ts) == "198.19.2.10-198.19.2.20 proto 6 port 443"
        b = s.definitions()
    # Swapping the peer's database again gives back this side's definitions.
    back = swap(b)
    assert back.phase1 == [t.__class__(**{**t.__dict__, "number": None}) for t in a.phase1]
    assert [(p.name, p.local_ts, p.remote_ts) for p in back.phase2] == [
        (p.name, p.local_ts, p.remote_ts) for p in a.phase2
    ]
    assert back.psks == a.psks
    # Putting a peer's plain export with -s is the same as its swapped export.
    c_db = tmp_path / "c" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(c_db))
    assert ikedb.main(["put", "-s", str(EXAMPLES / "subnet-to-subnet-psk.xml")]) == 0
    with Store(c_db) as s:
        assert [(t.local_id, t.remote_id, t.credentials.psk) for t in s.phase1_tunnels()] == [
            (t.local_id, t.remote_id, t.credentials.psk) for t in Store(b_db).phase1_tunnels()
        ]


def test_swapped_export_with_the_peers_certificate(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-cert.xml")]) == 0
    capsys.readouterr()
    assert (
        ikedb.main(
            ["get", "-s", "-t", "IKETunnel", "-n", "a-to-b-cert", "--cert", "/etc/ike/b.pem", "--key", "/etc/ike/b.key"]
        )
        == 0
    )
    out = capsys.readouterr().out
    defs, _ = read_definitions(out.encode(), "x.xml", tmp_path)
    (t,) = defs.phase1
    assert (t.local_id.value, t.remote_id.value) == ("gw-b.example", "gw-a.example")
    assert (t.cert_file, t.key_file) == ("/etc/ike/b.pem", "/etc/ike/b.key") and t.number is None
    assert t.ca_file is not None and t.ca_file.endswith("examples/certs/ca.pem")
    assert [p.name for p in defs.km_policies] == ["ikev2-rsa"]
    assert ikedb.main(["get", "--cert", "x", "--key", "y"]) == 2


def test_ikedb_refuses_non_root(db: Path) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    src = str(Path(ikedb.__file__).resolve().parents[2])
    r = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            sys.executable,
            "-m",
            "ike.cli.ikedb",
            "get",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env={"IKE_DB": str(db), "PYTHONPATH": src},
    )
    assert r.returncode == 1, r.stderr
    assert "must be root" in r.stderr and r.stdout == ""


def test_certgen_example_certificates_match_the_example_identities(tmp_path: Path) -> None:
    ca = certgen.make_ca("CN=t CA")
    host = certgen.make_host(ca, "gw-a.example", ["198.18.0.1"])
    defs, _ = read_definitions((EXAMPLES / "host-to-host-cert.xml").read_bytes(), "x.xml", tmp_path)
    from cryptography import x509

    san = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert defs.phase1[0].local_id.value in san.get_values_for_type(x509.DNSName)


def test_the_documented_complete_example_imports(db: Path, tmp_path: Path) -> None:
    doc = (EXAMPLES.parent / "docs" / "database.md").read_text()
    start = doc.index("```xml\n") + len("```xml\n")
    xml = doc[start : doc.index("```", start)]
    assert put(tmp_path, xml) == 0
    with Store(db) as s:
        assert [t.name for t in s.phase1_tunnels()] == ["a-b", "laptop"]
        assert [t.name for t in s.phase2_tunnels()] == ["a-b-nets", "a-b-dns", "laptop-net"]
        assert s.phase1(1).credentials.psk == b"a long random shared secret"  # type: ignore[union-attr]


names = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
keys = st.binary(min_size=1, max_size=40)
ipv4 = st.ip_addresses(v=4, network="198.18.0.0/15").map(str)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    a, b = sorted([draw(st.integers(0, 2**17 - 1)), draw(st.integers(0, 2**17 - 1))])
    base = int(ipaddress.ip_address("198.18.0.0"))
    proto = draw(st.sampled_from([0, 1, 6, 17, 47]))
    ports = (0, 65535)
    if proto in (6, 17) and draw(st.booleans()):
        lo = draw(st.integers(0, 65535))
        ports = (lo, draw(st.integers(lo, 65535)))
    return TrafficSelector(ipaddress.ip_address(base + a), ipaddress.ip_address(base + b), proto, *ports)  # type: ignore[arg-type]


@given(
    p1_names=st.lists(names, min_size=1, max_size=3, unique=True),
    p2=st.lists(st.tuples(names, selectors(), selectors(), st.booleans()), max_size=4, unique_by=lambda t: t[0]),
    remote=ipv4,
    psk=keys,
    autostart=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_write_then_read_is_the_identity(
    p1_names: list[str],
    p2: list[tuple[str, TrafficSelector, TrafficSelector, bool]],
    remote: str,
    psk: bytes,
    autostart: bool,
) -> None:
    km = KeyManagementPolicy("k", proposals=(IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14),))
    dm = DataManagementPolicy("d", proposals=(EspProposal("aes-gcm-16", 128, None, autostart),), pfs_group=19)
    defs = Definitions(
        km_policies=[km],
        dm_policies=[dm],
        phase1=[
            Phase1Spec(
                n,
                Identity.parse("198.18.0.1"),
                Identity.parse(remote),
                "198.18.0.1",
                remote,
                "k",
                autostart=autostart,
                number=i + 1,
            )
            for i, n in enumerate(p1_names)
        ],
        phase2=[Phase2Spec(n, p1_names[0], lt, rt, "d", auto) for n, lt, rt, auto in p2],
        psks=[PresharedKey(Identity.parse(remote), psk)],
    )
    text = write_definitions(defs)
    back, _ = read_definitions(text.encode(), "x.xml", Path("/"))
    assert back == defs
    assert write_definitions(back) == text


def test_export_file_is_0600_even_when_it_existed(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    out = tmp_path / "old.xml"
    out.write_text("an older, world-readable file\n")
    out.chmod(0o644)
    assert ikedb.main(["get", "-o", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert "IKEPresharedKey" in out.read_text() and "older" not in out.read_text()
    # Through a symbolic link: the file it points to is replaced, the link stays.
    link = tmp_path / "link.xml"
    link.symlink_to(out)
    out.chmod(0o644)
    assert ikedb.main(["get", "-t", "IKETunnel", "-o", str(link)]) == 0
    assert link.is_symlink() and out.stat().st_mode & 0o777 == 0o600
    assert "IKEPresharedKey" not in out.read_text() and "IKETunnel" in out.read_text()


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_export_to_an_unwritable_place_says_so(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    (tmp_path / "a-directory").mkdir()
    target = tmp_path / "missing-dir" / "x.xml" if where == "missing-dir" else tmp_path / "a-directory"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert ikedb.main(["get", "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "-o" in err and "nothing was written" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporary file left behind


HOSTNAME_PEER = """<AIX_VPN>
  <IKEProtection IKE_ProtectionName="k"><IKETransform IKE_Encryption="aes-gcm-16" IKE_KeyLength="128"
      IKE_PRF="hmac-sha2-256" IKE_DHGroup="19"/></IKEProtection>
  <IPSecProtection IPSec_ProtectionName="e"><IPSecESPProtocol ESP_Encryption="aes-gcm-16"
      ESP_KeyLength="128"/></IPSecProtection>
  <IKETunnel IKE_TunnelName="to-b" IKE_ProtectionRef="k" IKE_LocalAddress="198.18.0.1"
      IKE_RemoteAddress="gw-b.example">
    <IKELocalIdentity><FQDN Value="gw-a.example"/></IKELocalIdentity>
    <IKERemoteIdentity><FQDN Value="gw-b.example"/></IKERemoteIdentity>
  </IKETunnel>
  <IPSecTunnel IPSec_TunnelName="to-b-net" IKE_TunnelName="to-b" IPSec_ProtectionRef="e">
    <IPSecLocalIdentity><IPV4_Subnet Value="198.19.1.0" NetMask="24"/></IPSecLocalIdentity>
    <IPSecRemoteIdentity><IPV4_Subnet Value="198.19.2.0" NetMask="24"/></IPSecRemoteIdentity>
  </IPSecTunnel>
  <IKEPresharedKey Value="k-for-b"><PK_Identity><FQDN Value="gw-b.example"/></PK_Identity></IKEPresharedKey>
</AIX_VPN>
"""


def test_swapped_export_of_a_peer_known_by_host_name_imports_at_the_peer(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert put(tmp_path, HOSTNAME_PEER) == 0
    exported = tmp_path / "for-b.xml"
    capsys.readouterr()
    assert ikedb.main(["get", "-s", "-o", str(exported)]) == 0
    # The peer's own host name is no address to send from: the peer uses any local address, and says so.
    assert "IKETunnel 'to-b'" in capsys.readouterr().err
    b_db = tmp_path / "b" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(b_db))
    assert ikedb.main(["put", str(exported)]) == 0, capsys.readouterr().err
    with Store(b_db) as s:
        (t1,) = s.phase1_tunnels()
        assert (t1.local_id.value, t1.remote_id.value) == ("gw-b.example", "gw-a.example")
        assert (t1.local_addr, t1.remote_addr) == ("", "198.18.0.1")
        assert t1.credentials.psk == b"k-for-b"
    # put -s of A's plain export is the same.
    monkeypatch.setenv("IKE_DB", str(tmp_path / "c" / "ike.db"))
    assert put(tmp_path, HOSTNAME_PEER, "-s") == 0, capsys.readouterr().err
    with Store(tmp_path / "c" / "ike.db") as s:
        assert [(t.local_addr, t.remote_addr) for t in s.phase1_tunnels()] == [("", "198.18.0.1")]


def test_an_external_doctype_is_ignored(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The AIX ikedb page: a DOCTYPE naming an external DTD is accepted and ignored (nothing is fetched).
    xml = (EXAMPLES / "host-to-host-psk.xml").read_text()
    head, sep, rest = xml.partition("<AIX_VPN")
    for doctype in (
        '<!DOCTYPE AIX_VPN SYSTEM "ike.dtd">\n',
        '<!DOCTYPE AIX_VPN\n   PUBLIC "-//IBM//DTD AIX VPN//EN"\n   "http://198.18.0.1/ike.dtd" >\n',
    ):
        assert put(tmp_path, head + doctype + sep + rest, "-F") == 0, capsys.readouterr().err
    with Store(db) as s:
        assert [t.name for t in s.phase1_tunnels()] == ["a-to-b"]
    # Lines after a DOCTYPE of several lines are still counted right.
    bad = '<!DOCTYPE AIX_VPN\n SYSTEM\n "ike.dtd">\n<AIX_VPN>\n<Bogus/></AIX_VPN>'
    capsys.readouterr()
    assert put(tmp_path, bad) == 1
    assert "in.xml:5: <Bogus> is not an ikedb element" in capsys.readouterr().err


def test_a_change_that_breaks_a_stored_tunnel_points_at_the_change(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    before = snapshot(db)
    # The tunnel a-to-b is only in the database; the file switches its protection to RSA.
    z = (
        '<AIX_VPN>\n\n<IKEProtection IKE_ProtectionName="ikev2-aes256-sha256" IKE_AuthenticationMethod="RSA_signature">'
        '<IKETransform IKE_Encryption="aes-gcm-16" IKE_KeyLength="128" IKE_PRF="hmac-sha2-256" IKE_DHGroup="19"/>'
        "</IKEProtection></AIX_VPN>"
    )
    capsys.readouterr()
    assert put(tmp_path, z, "-F", name="z.xml") == 1
    err = capsys.readouterr().err
    assert "z.xml:3: <IKEProtection> 'ikev2-aes256-sha256': " in err, err
    assert "IKETunnel 'a-to-b' (in the database, not in this file)" in err and ":0:" not in err, err
    # The same for a phase 2 tunnel broken by a changed IKE version.
    dm = (
        '<AIX_VPN>\n<IPSecProtection IPSec_ProtectionName="esp-gcm-transport">'
        '<IPSecESPProtocol ESP_Encryption="chacha20-poly1305"/></IPSecProtection>\n'
        '<IKEProtection IKE_ProtectionName="ikev2-aes256-sha256" IKE_Version="1">'
        '<IKETransform IKE_Encryption="aes-cbc" IKE_KeyLength="128" IKE_PRF="hmac-sha2-256" IKE_DHGroup="19"/>'
        "</IKEProtection></AIX_VPN>"
    )
    assert put(tmp_path, dm, "-F", name="z.xml") == 1
    err = capsys.readouterr().err
    assert "z.xml:2: <IPSecProtection> 'esp-gcm-transport': " in err, err
    assert "IPSecTunnel 'a-to-b-hosts' (in the database, not in this file)" in err and ":0:" not in err, err
    assert snapshot(db) == before


def test_a_name_defined_twice_is_reported_at_the_second(tmp_path: Path) -> None:
    text = (
        "<AIX_VPN>\n<IKEGroup IKE_GroupName='g'><IKEGroupMember Value='198.18.0.2'/></IKEGroup>\n\n"
        "<IKEGroup IKE_GroupName='g'><IKEGroupMember Value='198.18.0.3'/></IKEGroup>\n"
        "<IKEPresharedKey Value='k1'><PK_Identity><FQDN Value='b.example'/></PK_Identity></IKEPresharedKey>\n"
        "<IKEPresharedKey Value='k2'><PK_Identity><FQDN Value='b.example'/></PK_Identity></IKEPresharedKey>\n"
        "</AIX_VPN>"
    )
    with pytest.raises(XmlError) as e:
        read_definitions(text.encode(), "f.xml", tmp_path)
    problems = dict(e.value.problems)
    assert set(problems) == {4, 6}, problems
    assert "'g' is defined twice (first at line 2)" in problems[4]
    assert "b.example" in problems[6] and "first at line 5" in problems[6]


def test_text_in_a_preshared_key_element_is_never_echoed(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "my-real-secret-key"
    for xml, line in (
        (
            f"<AIX_VPN>\n<IKEPresharedKey>{secret}<PK_Identity><FQDN Value='b.example'/></PK_Identity>"
            "</IKEPresharedKey></AIX_VPN>",
            2,
        ),
        (
            "<AIX_VPN>\n<IKEPresharedKey Value='k'><PK_Identity>\n"
            f"<FQDN Value='b.example'>{secret}</FQDN></PK_Identity></IKEPresharedKey></AIX_VPN>",
            3,
        ),
    ):
        capsys.readouterr()
        assert put(tmp_path, xml) == 1
        err = capsys.readouterr().err
        assert "unexpected text" in err and "IKEPresharedKey" in err and f"in.xml:{line}: " in err, err
        assert secret not in err and secret[:10] not in err


def test_get_and_delete_on_a_missing_database_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "ike.db"
    monkeypatch.setenv("IKE_DB", str(path))
    for argv in (["get"], ["get", "-s", "-o", str(tmp_path / "x.xml")], ["delete", "-t", "IKEGroup", "-n", "g"]):
        capsys.readouterr()
        assert ikedb.main(argv) == 1
        err = capsys.readouterr().err
        assert f"no tunnel database at {path}; define tunnels with ikedb put FILE" in err, err
        assert not path.parent.exists() and not (tmp_path / "x.xml").exists()
    assert ikedb.main(["put", str(EXAMPLES / "host-to-host-psk.xml")]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
