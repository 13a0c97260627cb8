"""strongSwan's charon as a real peer inside a test namespace.

Each `Charon` gets its own working directory holding strongswan.conf (kernel-libipsec: userspace ESP
over a TUN device `ipsec0`, so no kernel ESP support is needed), swanctl.conf, the vici socket and the
log. charon insists on /run/charon.pid and cannot be told otherwise in 5.9.8, so it runs under
`unshare -m` with a private tmpfs on /run: two charons (or charon and iked) can share the machine.

    with two_hosts() as (a, b), Charon(a) as left, Charon(b) as right:
        left.load(Conn(...)); right.load(Conn(...))
        left.initiate("net")
        sa = left.wait_established("ike", "net")

Configuration is written from `Conn`/`Child`/`Cert` parameters (see `render_swanctl`) and loaded with
`swanctl --load-all`; everything else (initiate, terminate, list SAs) goes through the `vici` package.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .netns import Host

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"

# openssl first: with gcm first, AES-GCM ESP ran about 7x slower (see shared notes/test-network.md).
PLUGINS = (
    "openssl random nonce aes sha1 sha2 md5 hmac xcbc cmac gcm chapoly curve25519 gmp pem pkcs1 pkcs8 x509 "
    "pubkey constraints kdf vici kernel-libipsec kernel-netlink socket-default"
)


class StrongswanError(RuntimeError):
    """charon or swanctl refused or failed; the message carries the relevant log."""


def available() -> tuple[bool, str]:
    """(True, "") when charon, swanctl, the vici package and /dev/net/tun are all there, else (False, why)."""
    missing = []
    if not os.access(CHARON, os.X_OK):
        missing.append(CHARON)
    if shutil.which(SWANCTL) is None:
        missing.append(SWANCTL)
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    try:
        import vici  # noqa: F401
    except ImportError:
        missing.append("python package vici")
    if missing:
        return False, f"strongSwan prerequisites missing: {', '.join(missing)} (run `make install`)"
    return True, ""


# ----------------------------------------------------------------------------------------------------------
# Configuration model and swanctl.conf rendering


@dataclass
class Child:
    """One CHILD_SA (IKEv2) / quick mode SA (IKEv1) definition."""

    name: str = "net"
    local_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    remote_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    esp_proposals: list[str] = field(default_factory=lambda: ["aes128gcm16-x25519"])
    mode: str = "tunnel"  # tunnel | transport
    start_action: str = "none"  # none | trap | start
    options: dict[str, str] = field(default_factory=dict)  # any other swanctl child option


@dataclass
class Conn:
    """One IKE connection. `auth` is "psk" (with `psk`) or "pubkey" (with `local_cert`, `local_key`
    and `cacerts`). IDs default to the addresses, as strongSwan does."""

    name: str = "ike"
    version: int = 2  # 1 | 2 (0 = either)
    local_addrs: list[str] = field(default_factory=list)
    remote_addrs: list[str] = field(default_factory=list)
    proposals: list[str] = field(default_factory=lambda: ["aes128-sha256-x25519"])
    aggressive: bool = False
    local_id: str | None = None
    remote_id: str | None = None
    auth: str = "psk"
    psk: str | bytes | None = None
    local_cert: Path | None = None
    local_key: Path | None = None
    cacerts: list[Path] = field(default_factory=list)
    children: list[Child] = field(default_factory=lambda: [Child()])
    options: dict[str, str] = field(default_factory=dict)  # any other swanctl connection option


def _value(v: str) -> str:
    # swanctl.conf needs quotes around values with spaces or syntax characters (DNs, for example).
    if v and all(c.isalnum() or c in "-_.:/,@%*+" for c in v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _block(name: str, items: list[str], indent: int) -> list[str]:
    pad = "  " * indent
    return [f"{pad}{name} {{", *items, f"{pad}}}"]


def render_swanctl(conns: list[Conn]) -> str:
    """swanctl.conf text for `conns`, with their PSKs. Certificates are referenced by absolute path;
    private keys are not named here (Charon.load puts them where swanctl looks for them)."""
    lines: list[str] = []
    secrets: list[str] = []
    for n, c in enumerate(conns):
        if c.auth not in ("psk", "pubkey"):
            raise ValueError(f"Conn {c.name}: auth must be 'psk' or 'pubkey', not {c.auth!r}")
        kv: list[str] = [
            f"      version = {c.version}",
            f"      proposals = {_value(','.join(c.proposals))}",
        ]
        if c.local_addrs:
            kv.append(f"      local_addrs = {_value(','.join(c.local_addrs))}")
        if c.remote_addrs:
            kv.append(f"      remote_addrs = {_value(','.join(c.remote_addrs))}")
        if c.aggressive:
            kv.append("      aggressive = yes")
        kv += [f"      {k} = {_value(v)}" for k, v in c.options.items()]
        local = [f"        auth = {c.auth}"]
        remote = [f"        auth = {c.auth}"]
        if c.local_id:
            local.append(f"        id = {_value(c.local_id)}")
        if c.remote_id:
            remote.append(f"        id = {_value(c.remote_id)}")
        if c.auth == "pubkey":
            if c.local_cert is None or c.local_key is None:
                raise ValueError(f"Conn {c.name}: pubkey auth needs local_cert and local_key")
            local.append(f"        certs = {_value(str(Path(c.local_cert).resolve()))}")
            if c.cacerts:
                remote.append(f"        cacerts = {_value(','.join(str(Path(p).resolve()) for p in c.cacerts))}")
        else:
            if c.psk is None:
                raise ValueError(f"Conn {c.name}: psk auth needs psk")
            raw = c.psk.encode() if isinstance(c.psk, str) else c.psk
            owners = [f"    id-{i} = {_value(x)}" for i, x in enumerate((c.local_id, c.remote_id)) if x]
            secrets += _block(f"ike-{n}", [f"    secret = 0s{base64.b64encode(raw).decode()}", *owners], 1)
        children: list[str] = []
        for ch in c.children:
            ckv = [
                f"            local_ts = {_value(','.join(ch.local_ts))}",
                f"            remote_ts = {_value(','.join(ch.remote_ts))}",
                f"            esp_proposals = {_value(','.join(ch.esp_proposals))}",
                f"            mode = {ch.mode}",
                f"            start_action = {ch.start_action}",
                *(f"            {k} = {_value(v)}" for k, v in ch.options.items()),
            ]
            children += _block(ch.name, ckv, 5)
        kv += _block("local", local, 3) + _block("remote", remote, 3) + _block("children", children, 3)
        lines += _block(c.name, kv, 2)
    return "\n".join(_block("connections", lines, 0) + _block("secrets", secrets, 0)) + "\n"


def strongswan_conf(workdir: Path, extra: str = "") -> str:
    sock = workdir / "charon.vici"
    return f"""charon {{
  load = {PLUGINS}
  install_routes = yes
  # test peer only: lets IKEv1 aggressive mode with PSK be answered
  i_dont_care_about_security_and_use_aggressive_mode_psk = yes
  retransmit_tries = 3
  retransmit_timeout = 1.0
  plugins {{
    vici {{
      socket = unix://{sock}
    }}
  }}
  filelog {{
    charon {{
      path = {workdir / "charon.log"}
      time_format = %H:%M:%S
      default = 1
      ike = 2
      cfg = 2
      knl = 1
      flush_line = yes
    }}
  }}
  {extra}
}}
swanctl {{
  socket = unix://{sock}
}}
"""


# ----------------------------------------------------------------------------------------------------------
# SA listing, parsed from vici


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _opt(d: dict[str, Any], key: str) -> str | None:
    return _s(d[key]) if key in d else None


def _int(d: dict[str, Any], key: str, base: int = 10) -> int:
    return int(_s(d.get(key, b"0")), base)


def _list(v: Any) -> list[str]:
    return [_s(x) for x in v] if isinstance(v, list) else ([] if v is None else [_s(v)])


@dataclass
class ChildSa:
    name: str
    uniqueid: int
    state: str  # INSTALLED, REKEYING, ...
    mode: str  # TUNNEL | TRANSPORT
    protocol: str  # ESP | AH
    encap: bool
    spi_in: int
    spi_out: int
    encr_alg: str | None
    encr_keysize: int | None
    integ_alg: str | None
    dh_group: str | None
    local_ts: list[str]
    remote_ts: list[str]
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> ChildSa:
        return cls(
            name=_s(d.get("name", b"")),
            uniqueid=_int(d, "uniqueid"),
            state=_s(d.get("state", b"")),
            mode=_s(d.get("mode", b"")),
            protocol=_s(d.get("protocol", b"")),
            encap=_s(d.get("encap", b"no")) == "yes",
            spi_in=_int(d, "spi-in", 16),
            spi_out=_int(d, "spi-out", 16),
            encr_alg=_opt(d, "encr-alg"),
            encr_keysize=_int(d, "encr-keysize") if "encr-keysize" in d else None,
            integ_alg=_opt(d, "integ-alg"),
            dh_group=_opt(d, "dh-group"),
            local_ts=_list(d.get("local-ts")),
            remote_ts=_list(d.get("remote-ts")),
            bytes_in=_int(d, "bytes-in"),
            bytes_out=_int(d, "bytes-out"),
            packets_in=_int(d, "packets-in"),
            packets_out=_int(d, "packets-out"),
            raw=d,
        )


@dataclass
class IkeSa:
    name: str
    uniqueid: int
    version: int
    state: str  # CONNECTING, ESTABLISHED, ...
    initiator: bool
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    local_id: str
    remote_id: str
    initiator_spi: int
    responder_spi: int
    encr_alg: str | None
    encr_keysize: int | None
    integ_alg: str | None
    prf_alg: str | None
    dh_group: str | None
    nat_any: bool
    children: list[ChildSa]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, name: str, d: dict[str, Any]) -> IkeSa:
        kids = d.get("child-sas") or {}
        return cls(
            name=name,
            uniqueid=_int(d, "uniqueid"),
            version=_int(d, "version"),
            state=_s(d.get("state", b"")),
            initiator=_s(d.get("initiator", b"no")) == "yes",
            local_host=_s(d.get("local-host", b"")),
            local_port=_int(d, "local-port"),
            remote_host=_s(d.get("remote-host", b"")),
            remote_port=_int(d, "remote-port"),
            local_id=_s(d.get("local-id", b"")),
            remote_id=_s(d.get("remote-id", b"")),
            initiator_spi=_int(d, "initiator-spi", 16),
            responder_spi=_int(d, "responder-spi", 16),
            encr_alg=_opt(d, "encr-alg"),
            encr_keysize=_int(d, "encr-keysize") if "encr-keysize" in d else None,
            integ_alg=_opt(d, "integ-alg"),
            prf_alg=_opt(d, "prf-alg"),
            dh_group=_opt(d, "dh-group"),
            nat_any=any(_s(d.get(k, b"no")) == "yes" for k in ("nat-local", "nat-remote", "nat-fake", "nat-any")),
            children=[ChildSa.parse(v) for v in kids.values()],
            raw=d,
        )

    def child(self, name: str) -> ChildSa | None:
        return next((c for c in self.children if c.name == name and c.state == "INSTALLED"), None)


# ----------------------------------------------------------------------------------------------------------
# The daemon


class Charon:
    """charon running inside `host`. Use as a context manager (or call start()/stop())."""

    def __init__(self, host: Host, workdir: Path | None = None, extra_conf: str = "") -> None:
        self.host = host
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{host.name}-charon-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "strongswan.conf"
        self.swanctl_conf = self.workdir / "swanctl.conf"
        self.socket_path = self.workdir / "charon.vici"
        self.log_path = self.workdir / "charon.log"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conns: list[Conn] = []

    # lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        # SWANCTL_DIR: swanctl loads private keys only from <dir>/private (see load()).
        return {"STRONGSWAN_CONF": str(self.conf), "SWANCTL_DIR": str(self.workdir)}

    def start(self, timeout: float = 15) -> None:
        ok, why = available()
        if not ok:
            raise StrongswanError(why)
        self.conf.write_text(strongswan_conf(self.workdir, self.extra_conf))
        # A private /run: charon's pid file (and anything else it puts there) stays in this namespace.
        cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}"]
        out = (self.workdir / "charon.stdout").open("wb")
        self.proc = self.host.popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StrongswanError(f"charon in {self.host.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path.exists():
                try:
                    self._connect().close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise StrongswanError(f"charon in {self.host.name}: no vici socket after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 5) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if self._own_dir and not os.environ.get("IKETEST_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, tail: int = 200) -> str:
        parts = []
        for p in (self.workdir / "charon.stdout", self.log_path):
            if p.exists():
                parts += p.read_text(errors="replace").splitlines()
        return "\n".join(parts[-tail:])

    # configuration ----------------------------------------------------------------------------------------
    def load(self, *conns: Conn) -> None:
        """Write swanctl.conf for `conns` (replacing what was loaded before) and load it."""
        self.conns = list(conns)
        self.swanctl_conf.write_text(render_swanctl(self.conns))
        # Keys named in swanctl.conf's secrets are only passphrase hints; the keys themselves must be here.
        private = self.workdir / "private"
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir(mode=0o700)
        for n, c in enumerate(self.conns):
            if c.auth == "pubkey" and c.local_key is not None:
                shutil.copyfile(c.local_key, private / f"{n}-{Path(c.local_key).name}")
        self.swanctl("--load-all", "--clear", "--file", str(self.swanctl_conf))

    def swanctl(self, *args: str, timeout: float = 30) -> str:
        """Run swanctl against this charon; raises StrongswanError with its output on failure."""
        proc = self.host.run([SWANCTL, *args], check=False, timeout=timeout, env=self.env)
        if proc.returncode != 0:
            raise StrongswanError(f"swanctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    # control ----------------------------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        try:
            s.connect(str(self.socket_path))
        except OSError:
            s.close()
            raise
        return s

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A vici.Session on this charon's socket."""
        import vici

        s = self._connect()
        try:
            yield vici.Session(s)
        finally:
            s.close()

    def _streamed(self, method: str, args: dict[str, Any]) -> list[str]:
        from vici.exception import CommandException

        logs: list[str] = []
        with self.session() as sess:
            try:
                for entry in getattr(sess, method)(args):
                    logs.append(_s(entry.get("msg", b"")))
            except CommandException as e:
                raise StrongswanError(f"{method} {args} failed: {e}\n--- vici log ---\n" + "\n".join(logs)) from e
        return logs

    def initiate(self, child: str, ike: str | None = None, timeout: float = 20) -> list[str]:
        """Initiate `child` (of connection `ike`) and wait for the result; returns charon's log lines.
        Raises StrongswanError when negotiation fails."""
        args: dict[str, Any] = {"child": child, "timeout": str(int(timeout * 1000)), "init-limits": "no"}
        if ike is not None:
            args["ike"] = ike
        return self._streamed("initiate", args)

    def terminate(
        self, ike: str | None = None, child: str | None = None, timeout: float = 10, force: bool = False
    ) -> list[str]:
        """Terminate (sending DELETE) the named IKE SA or CHILD_SA; raises when nothing matched."""
        args: dict[str, Any] = {"timeout": str(int(timeout * 1000))}
        if ike is not None:
            args["ike"] = ike
        if child is not None:
            args["child"] = child
        if force:
            args["force"] = "yes"
        return self._streamed("terminate", args)

    def list_sas(self, ike: str | None = None) -> list[IkeSa]:
        args: dict[str, Any] = {} if ike is None else {"ike": ike}
        out: list[IkeSa] = []
        with self.session() as sess:
            for entry in sess.list_sas(args):
                out += [IkeSa.parse(_s(k), v) for k, v in entry.items()]
        return out

    def wait_established(self, ike: str = "ike", child: str | None = None, timeout: float = 20) -> IkeSa:
        """Wait until the IKE SA named `ike` is ESTABLISHED (and `child` INSTALLED, if given)."""
        deadline = time.monotonic() + timeout
        last: list[IkeSa] = []
        while True:
            last = self.list_sas()
            for sa in last:
                if sa.name == ike and sa.state == "ESTABLISHED" and (child is None or sa.child(child)):
                    return sa
            if time.monotonic() > deadline:
                raise StrongswanError(
                    f"{ike}/{child} not established in {self.host.name} after {timeout}s; SAs: {last}\n{self.log()}"
                )
            time.sleep(0.1)

    def wait_no_sas(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.list_sas():
            if time.monotonic() > deadline:
                raise StrongswanError(f"SAs still present in {self.host.name}: {self.list_sas()}")
            time.sleep(0.1)
