"""Tunnel definitions for tests: one parameter set rendered both as our AIX_VPN XML (for `ikedb put`)
and as the matching strongSwan proposal strings, so both ends of an interop test are configured
from the same values."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

if TYPE_CHECKING:
    from .strongswan import Conn


@dataclass(frozen=True)
class IkeT:
    """One phase 1 transform set (names as in ike.proto.transforms)."""

    encr: str = "aes-cbc"
    keylen: int = 256
    prf: str = "hmac-sha2-256"
    dh: int = 19
    integ: str | None = "hmac-sha2-256-128"  # None for AEAD


@dataclass(frozen=True)
class EspT:
    encr: str = "aes-gcm-16"
    keylen: int = 256
    auth: str | None = None  # None for AEAD


@dataclass
class Tunnel:
    """A gateway-to-gateway tunnel seen from `local_gw`. `local_net`/`remote_net` are CIDR prefixes
    (None for host to host: the gateways' own addresses). `swapped()` gives the peer's view."""

    local_gw: str
    remote_gw: str
    psk: str
    local_net: str | None = None
    remote_net: str | None = None
    version: int = 2
    mode: str = "main"  # IKEv1: main | aggressive
    ike: list[IkeT] = field(default_factory=lambda: [IkeT()])
    esp: list[EspT] = field(default_factory=lambda: [EspT()])
    pfs: int | None = None
    encapsulation: str = "Tunnel"  # Tunnel | Transport
    name: str = "t"
    autostart: bool = False
    # Authentication: "psk", or certificates with "rsa" / "ecdsa" (then cert, key and ca are needed).
    auth: str = "psk"
    # Phase 1 identities: an address, a DN ("CN=gw,O=x" RFC 4514), user@fqdn or an FQDN; None = the gateway.
    local_id: str | None = None
    remote_id: str | None = None
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    peer_cert: str | None = None  # the other end's files, for swapped()
    peer_key: str | None = None
    ike_lifetime_s: int = 28800
    esp_lifetime_s: int = 3600
    dpd_delay_s: int | None = None  # None: the database default
    dpd_action: str | None = None  # clear | restart | hold; None: the database default

    def swapped(self) -> Tunnel:
        from dataclasses import replace

        return replace(
            self,
            local_gw=self.remote_gw,
            remote_gw=self.local_gw,
            local_net=self.remote_net,
            remote_net=self.local_net,
            local_id=self.remote_id,
            remote_id=self.local_id,
            cert=self.peer_cert,
            key=self.peer_key,
            peer_cert=self.cert,
            peer_key=self.key,
        )

    @property
    def local_identity(self) -> str:
        return self.local_id or self.local_gw

    @property
    def remote_identity(self) -> str:
        return self.remote_id or self.remote_gw

    # -- our side ---------------------------------------------------------------------------------------
    def xml(self) -> str:
        def addr_el(a: str) -> str:
            try:
                v = ipaddress.ip_address(a).version
            except ValueError:
                kind = "X500DN" if "=" in a else "User_FQDN" if "@" in a else "FQDN"
                return f"<{kind} Value={quoteattr(a)}/>"
            return f"<IPV{v}_Address Value={quoteattr(a)}/>"

        def net_el(n: str) -> str:
            net = ipaddress.ip_network(n)
            return f'<IPV{net.version}_Subnet Value={quoteattr(str(net.network_address))} NetMask="{net.prefixlen}"/>'

        ike_ts = "\n".join(
            f'    <IKETransform IKE_Encryption="{t.encr}" IKE_KeyLength="{t.keylen}" '
            + (f'IKE_Integrity="{t.integ}" ' if t.integ else "")
            + f'IKE_PRF="{t.prf}" IKE_DHGroup="{t.dh}"/>'
            for t in self.ike
        )
        esp_ts = "\n".join(
            f'    <IPSecESPProtocol ESP_Encryption="{t.encr}" ESP_KeyLength="{t.keylen}"'
            + (f' ESP_Authentication="{t.auth}"' if t.auth else "")
            + "/>"
            for t in self.esp
        )
        xchg = f' IKE_XCHGMode="{self.mode.capitalize()}"' if self.version == 1 else ""
        yes = {True: "Yes", False: "No"}
        selectors = ""
        if self.local_net and self.remote_net:
            selectors = (
                f"\n    <IPSecLocalIdentity>{net_el(self.local_net)}</IPSecLocalIdentity>"
                f"\n    <IPSecRemoteIdentity>{net_el(self.remote_net)}</IPSecRemoteIdentity>\n  "
            )
        method = _AUTH_METHOD[self.auth]
        dpd = ""
        if self.dpd_delay_s is not None:
            dpd += f' IKE_DPDDelaySeconds="{self.dpd_delay_s}"'
        if self.dpd_action is not None:
            dpd += f' IKE_DPDAction="{self.dpd_action}"'
        files = ""
        if self.auth != "psk":
            if not (self.cert and self.key and self.ca):
                raise ValueError(f"tunnel {self.name}: {self.auth} authentication needs cert, key and ca")
            files = (
                f"\n             IKE_CertificateFile={quoteattr(self.cert)} IKE_PrivateKeyFile={quoteattr(self.key)}"
                f" IKE_CAFile={quoteattr(self.ca)}"
            )
        gws = ""
        if self.local_id or self.remote_id:
            gws = (
                f"\n             IKE_LocalAddress={quoteattr(self.local_gw)}"
                f" IKE_RemoteAddress={quoteattr(self.remote_gw)}"
            )
        psk = ""
        if self.auth == "psk":
            psk = f"""
  <IKEPresharedKey Value={quoteattr(self.psk)}>
    <PK_Identity>{addr_el(self.remote_identity)}</PK_Identity>
  </IKEPresharedKey>"""
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<AIX_VPN Version="2.0">
  <IKEProtection IKE_ProtectionName="{self.name}-ike" IKE_Version="{self.version}"{xchg}
                 IKE_AuthenticationMethod="{method}" IKE_KeyRefreshSeconds="{self.ike_lifetime_s}"{dpd}>
{ike_ts}
  </IKEProtection>
  <IPSecProtection IPSec_ProtectionName="{self.name}-esp" IPSec_EncapsulationMode="{self.encapsulation}"
                   IPSec_PFSGroup="{self.pfs or "none"}" IPSec_KeyRefreshSeconds="{self.esp_lifetime_s}">
{esp_ts}
  </IPSecProtection>
  <IKETunnel IKE_TunnelName="{self.name}" IKE_ProtectionRef="{self.name}-ike"
             IKE_Flags_AutoStart="{yes[self.autostart]}"{gws}{files}>
    <IKELocalIdentity>{addr_el(self.local_identity)}</IKELocalIdentity>
    <IKERemoteIdentity>{addr_el(self.remote_identity)}</IKERemoteIdentity>
  </IKETunnel>
  <IPSecTunnel IPSec_TunnelName="{self.name}-child" IKE_TunnelName="{self.name}"
               IPSec_ProtectionRef="{self.name}-esp"
               IPSec_Flags_AutoStart="{yes[self.autostart]}">{selectors}</IPSecTunnel>{psk}
</AIX_VPN>
"""

    # -- strongSwan's side -----------------------------------------------------------------------------
    def ss_conn(
        self,
        start_action: str = "none",
        options: dict[str, str] | None = None,
        child_options: dict[str, str] | None = None,
    ) -> Conn:
        """This tunnel as a strongSwan connection "ike" with child "net" (call it on the peer's view,
        `swapped()`). `options`/`child_options` add swanctl settings (lifetimes, DPD, ...)."""
        from pathlib import Path

        from .strongswan import Child, Conn

        certs: dict[str, Any] = {}
        if self.auth != "psk":
            if not (self.cert and self.key and self.ca):
                raise ValueError(f"tunnel {self.name}: {self.auth} authentication needs cert, key and ca")
            certs = {"auth": "pubkey", "local_cert": Path(self.cert), "local_key": Path(self.key)}
            certs["cacerts"] = [Path(self.ca)]
        return Conn(
            version=self.version,
            aggressive=self.mode == "aggressive",
            local_addrs=[self.local_gw],
            remote_addrs=[self.remote_gw],
            local_id=ss_identity(self.local_identity),
            remote_id=ss_identity(self.remote_identity),
            psk=self.psk if self.auth == "psk" else None,
            proposals=self.ss_ike_proposals(),
            options=dict(options or {}),
            children=[
                Child(
                    local_ts=[self.local_net or "dynamic"],
                    remote_ts=[self.remote_net or "dynamic"],
                    esp_proposals=self.ss_esp_proposals(),
                    mode=self.encapsulation.lower(),
                    start_action=start_action,
                    options=dict(child_options or {}),
                )
            ],
            **certs,
        )

    def ss_ike_proposals(self) -> list[str]:
        out = []
        for t in self.ike:
            parts = [_SS_ENCR[t.encr](t.keylen)]
            if t.integ:
                parts.append(_SS_INTEG[t.integ])
            if self.version == 2:
                parts.append("prf" + _SS_PRF[t.prf])
            parts.append(_SS_DH[t.dh])
            out.append("-".join(parts))
        return out

    def ss_esp_proposals(self) -> list[str]:
        out = []
        for t in self.esp:
            parts = [_SS_ENCR[t.encr](t.keylen)]
            if t.auth:
                parts.append(_SS_INTEG[t.auth])
            if self.pfs:
                parts.append(_SS_DH[self.pfs])
            out.append("-".join(parts))
        return out


def ss_identity(identity: str) -> str:
    """An identity as strongSwan writes it: DNs in DER order ("C=US, O=x, CN=gw"), where RFC 4514
    text (what our XML takes) lists the most specific part first."""
    if "=" not in identity:
        return identity
    from cryptography import x509

    name = x509.Name.from_rfc4514_string(identity)
    return ", ".join(attr.rfc4514_string() for rdn in name.rdns for attr in rdn)


_AUTH_METHOD = {"psk": "Preshared_key", "rsa": "RSA_signature", "ecdsa": "ECDSA_signature"}

_SS_ENCR: dict[str, Callable[[int], str]] = {
    "aes-cbc": lambda k: f"aes{k}",
    "aes-gcm-16": lambda k: f"aes{k}gcm16",
    "chacha20-poly1305": lambda k: "chacha20poly1305",
    "3des-cbc": lambda k: "3des",
}
_SS_INTEG = {
    "hmac-md5-96": "md5",
    "hmac-sha1-96": "sha1",
    "hmac-sha2-256-128": "sha256",
    "hmac-sha2-384-192": "sha384",
    "hmac-sha2-512-256": "sha512",
    "aes-xcbc-96": "aesxcbc",
}
_SS_PRF = {
    "hmac-md5": "md5",
    "hmac-sha1": "sha1",
    "hmac-sha2-256": "sha256",
    "hmac-sha2-384": "sha384",
    "hmac-sha2-512": "sha512",
}
_SS_DH = {
    1: "modp768",
    2: "modp1024",
    5: "modp1536",
    14: "modp2048",
    15: "modp3072",
    16: "modp4096",
    19: "ecp256",
    20: "ecp384",
    21: "ecp521",
    31: "curve25519",
}
