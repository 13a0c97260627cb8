"""iked: the tunnel manager daemon (console script `iked`).

Runs in the foreground (systemd's Type=simple; tests start it the same way): UDP 500/4500 on the
listen addresses, the IKEv1 and IKEv2 engines, the data plane and the control socket for `ike`.
SIGTERM/SIGINT delete every SA and stop; SIGHUP re-reads IKE_CONF and the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ike import paths
from ike.daemon import logging_conf
from ike.daemon.control import ControlServer, RequestError
from ike.daemon.manager import DataPlane, EngineFactory, ManagerError, TunnelManager
from ike.daemon.policies import ActivationTarget, IndexedPolicies, LookupError_, load_from_store
from ike.daemon.server import NATT_KEEPALIVE, UdpServer
from ike.dataplane.base import DataPlaneError
from ike.policy import PolicyError
from ike.proto.api import EngineSettings

log = logging.getLogger("ike.daemon")

DEFAULT_WAIT_S = 60.0
MAX_WAIT_S = 3600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="iked", description="IKE/IPsec tunnel manager daemon (AIX ike command's peer)")
    p.add_argument("--foreground", action="store_true", default=True, help="run in the foreground (the default)")
    p.add_argument(
        "--dataplane",
        choices=("auto", "userspace", "xfrm", "none"),
        default="auto",
        help="where negotiated SAs go: userspace ESP over TUN, kernel XFRM, none (negotiate only), "
        "or auto (xfrm if the kernel can carry ESP, else userspace)",
    )
    p.add_argument(
        "--listen",
        action="append",
        default=None,
        metavar="ADDR",
        help="address to listen on (repeatable, or comma-separated); default 0.0.0.0 and ::",
    )
    p.add_argument("--ike-port", type=int, default=500, help="IKE port (default 500)")
    p.add_argument("--natt-port", type=int, default=4500, help="NAT-T port (default 4500)")
    p.add_argument("--db", type=Path, default=None, help="tunnel database (default IKE_DB or /var/lib/ike/ike.db)")
    p.add_argument("--conf", type=Path, default=None, help="log configuration (default IKE_CONF or /etc/isakmpd.conf)")
    p.add_argument(
        "--rundir", type=Path, default=None, help="control socket directory (default IKE_RUNDIR or /run/ike)"
    )
    p.add_argument("--no-autostart", action="store_true", help="do not start autostart tunnels at start-up")
    p.add_argument(
        "--retransmit-timeout", type=float, default=1.0, help="seconds before the first retransmission (doubles)"
    )
    p.add_argument(
        "--retransmit-tries", type=int, default=5, help="retransmissions before a peer counts as unreachable"
    )
    p.add_argument(
        "--cookie-threshold",
        type=int,
        default=50,
        help="half-open IKEv2 SAs before new initiators must return a COOKIE (RFC 7296 2.6); 0: always",
    )
    ns = p.parse_args(argv)
    if ns.listen:
        ns.listen = [a.strip() for item in ns.listen for a in item.split(",") if a.strip()]
    else:
        ns.listen = ["0.0.0.0", "::"]  # noqa: S104 (an IKE daemon answers on every address by default)
    for port in (ns.ike_port, ns.natt_port):
        if not 0 <= port <= 65535:
            p.error(f"port {port} is outside 0-65535")
    if not 0.05 <= ns.retransmit_timeout <= 60:
        p.error("--retransmit-timeout must be between 0.05 and 60 seconds")
    if not 0 <= ns.retransmit_tries <= 20:
        p.error("--retransmit-tries must be between 0 and 20")
    if not 0 <= ns.cookie_threshold <= 1_000_000:
        p.error("--cookie-threshold must be between 0 and 1000000 half-open SAs")
    return ns


def make_dataplane(kind: str) -> DataPlane | None:
    """The data plane backend ('none' too: it still answers counters). ike.dataplane owns them."""
    from ike.dataplane.base import create_backend

    backend: Any = create_backend(kind)
    return backend  # type: ignore[no-any-return]


def engine_settings(ns: argparse.Namespace) -> EngineSettings:
    """What the command line sets of the engines' settings."""
    return EngineSettings(
        retransmit_timeout_s=ns.retransmit_timeout,
        retransmit_tries=ns.retransmit_tries,
        half_open_cookie_threshold=ns.cookie_threshold,
    )


def make_engine_factory(policies: IndexedPolicies, ns: argparse.Namespace) -> EngineFactory:
    from ike.daemon.engines import RealEngines

    engines = RealEngines(policies, engine_settings(ns))
    engines.preload()
    factory: EngineFactory = engines
    return factory


class Daemon:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.db = ns.db or paths.db_path()
        self.conf = ns.conf or paths.conf_path()
        self.sock = (ns.rundir / "iked.sock") if ns.rundir else paths.control_socket()
        self.logs = logging_conf.LogSwitch()
        self.stop = asyncio.Event()
        self.manager: TunnelManager | None = None
        self.udp: UdpServer | None = None
        self.control: ControlServer | None = None
        self.dataplane: Any = None
        self.factory: Any = None
        self._policies: IndexedPolicies | None = None
        self._policies_sig: tuple[object, ...] = ()

    def load_policies(self) -> IndexedPolicies:
        """The database's definitions, re-read only when its files changed since the last read."""
        sig = _file_signature(self.db)
        if self._policies is None or sig != self._policies_sig:
            self._policies = load_from_store(self.db)
            self._policies_sig = sig
            log.debug("tunnel definitions read from %s", self.db)
        return self._policies

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            self.logs.apply(logging_conf.load(self.conf))
        except logging_conf.LogConfigError as e:
            self.logs.apply(logging_conf.LogSettings(destination="stderr"))
            log.error("%s; using level events on stderr until it is fixed (then: ike cmd=log)", e)
        try:
            policies = self.load_policies()
        except Exception as e:
            log.error("cannot read the tunnel database %s: %s", self.db, e)
            return 1
        try:
            self.dataplane = make_dataplane(self.ns.dataplane)
            if self.dataplane is not None and hasattr(self.dataplane, "start"):
                await self.dataplane.start()
        except Exception as e:
            log.error("data plane %s: %s", self.ns.dataplane, e)
            return 1
        self.factory = make_engine_factory(policies, self.ns)
        udp = UdpServer(loop, self.ns.listen, self.ns.ike_port, self.ns.natt_port)
        self.udp = udp
        settings = getattr(self.factory, "settings", None)
        manager = TunnelManager(
            loop,
            policies,
            self.factory,
            udp.send_ike,
            self.dataplane,
            self.load_policies,
            send_keepalive=lambda local, remote: udp.send_esp(NATT_KEEPALIVE, local, remote),
            nat_keepalive_s=(settings if isinstance(settings, EngineSettings) else EngineSettings()).nat_keepalive_s,
        )
        self.manager = manager
        udp.on_ike = manager.receive
        self._wire_dataplane()
        try:
            udp.start()
            if self.dataplane is not None:
                for sock in udp.sockets():
                    self.dataplane.bypass_socket(sock)
                if udp.hand_natt_to(self.dataplane.attach_udp_socket):
                    log.debug("the data plane reads the NAT-T sockets itself")
        except OSError as e:
            log.error(
                "cannot listen on %s ports %d/%d: %s", ",".join(self.ns.listen), self.ns.ike_port, self.ns.natt_port, e
            )
            udp.close()
            return 1
        except DataPlaneError as e:
            log.error("the data plane cannot take the IKE sockets: %s (try --dataplane userspace)", e)
            udp.close()
            return 1
        self.control = ControlServer(self.sock, self.handle)
        try:
            await self.control.start()
        except (OSError, RuntimeError) as e:
            log.error("control socket %s: %s", self.sock, e)
            udp.close()
            return 1
        pidfile = self.sock.parent / "iked.pid"
        with contextlib.suppress(OSError):
            pidfile.write_text(f"{os.getpid()}\n")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        log.info(
            "iked started: listening on %s ports %d/%d, data plane %s, control socket %s",
            ",".join(self.ns.listen),
            self.ns.ike_port,
            self.ns.natt_port,
            type(self.dataplane).__name__ if self.dataplane is not None else "none",
            self.sock,
        )
        manager.feed_liveness()
        if not self.ns.no_autostart:
            targets = policies.autostart()
            if targets:
                log.info("starting %d autostart tunnel(s)", len(targets))
                manager.activate(targets, None)
        await self.stop.wait()
        log.info("iked stopping: deleting all SAs")
        manager.shutdown()
        await asyncio.sleep(0.05)  # let the deletes leave
        await self.control.close()
        await self._close_dataplane()  # first: it may be reading the NAT-T sockets
        udp.close()
        with contextlib.suppress(OSError):
            pidfile.unlink()
        self.logs.close()
        return 0

    def _wire_dataplane(self) -> None:
        dp, udp, manager = self.dataplane, self.udp, self.manager
        if dp is None or udp is None or manager is None:
            return
        dp.set_udp_sender(udp.send_esp)
        udp.on_esp = dp.receive_udp_esp

        def expired(dp_id: int, kind: str) -> None:
            manager.on_dataplane_expire(dp_id, kind == "hard")

        dp.set_expiry_callback(expired)
        dp.set_acquire_callback(manager.on_acquire)

    async def _close_dataplane(self) -> None:
        if self.dataplane is None:
            return
        try:
            await self.dataplane.close()
        except Exception as e:
            log.error("closing the data plane: %s", e)

    def _sighup(self) -> None:
        try:
            self.logs.reload(self.conf)
            log.info("SIGHUP: logging %s", self.logs.current.describe() if self.logs.current else "?")
        except logging_conf.LogConfigError as e:
            log.error("SIGHUP: %s; logging unchanged", e)
        self._reload_policies()

    def _reload_policies(self) -> IndexedPolicies:
        assert self.manager is not None
        try:
            self.manager.reload_policies()
        except Exception as e:
            raise RequestError(f"cannot read the tunnel database {self.db}: {e}") from None
        return self.manager.policies

    # --- control requests -----------------------------------------------------------------------

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        m = self.manager
        assert m is not None
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "log":
            try:
                s = self.logs.reload(self.conf)
            except logging_conf.LogConfigError as e:
                raise RequestError(f"{e}; logging unchanged") from None
            log.info("logging switched to %s", s.describe())
            return {"level": s.level, "destination": s.destination, "conf": str(self.conf)}
        if op == "reload":
            p = self._reload_policies()
            return {"phase1": len(p.p1_by_number), "phase2": len(p.p2_by_number)}
        if op == "list":
            phase = _opt_str(args, "phase") or "1+"
            if phase not in ("1", "1+", "2"):
                raise RequestError(f"phase={phase} is not valid for list; use 1, 1+ or 2")
            role = _opt_str(args, "role")
            if role not in (None, "i", "r"):
                raise RequestError(f"role={role}: use i or r")
            return m.listing(phase, _opt_numbers(args), role)
        if op == "remove":
            try:
                return {"removed": m.remove(_opt_phase(args), _opt_numbers(args))}
            except ManagerError as e:
                raise RequestError(str(e)) from None
        if op == "activate":
            return await self._activate(args)
        if op == "status":
            return {
                "pid": os.getpid(),
                "phase1": sum(1 for e in m.p1.values() if e.live),
                "phase2": sum(1 for e in m.p2.values() if e.live),
                "stats": vars(m.stats),
                "udp": vars(self.udp.stats) if self.udp else {},
            }
        raise RequestError(f"unknown request {op!r}")

    async def _activate(self, args: dict[str, Any]) -> Any:
        m = self.manager
        assert m is not None
        policies = self._reload_policies()
        phase = _opt_phase(args)
        targets: list[ActivationTarget]
        try:
            if args.get("autostart"):
                targets = policies.autostart()
                if not targets:
                    raise RequestError("no tunnel in the database is marked autostart")
            elif args.get("numlist") is not None:
                targets = policies.by_numbers(_opt_numbers(args) or [], phase)
            elif args.get("namelist") is not None:
                names = args["namelist"]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise RequestError("namelist must be a list of names")
                if phase is None:
                    raise RequestError("namelist needs phase=1 or phase=2")
                targets = policies.by_names(names, phase)
            elif args.get("remid") is not None:
                targets = policies.by_remote_id(str(args["remid"]), phase)
            elif args.get("ipaddr") is not None:
                ip = args["ipaddr"]
                if not isinstance(ip, list) or len(ip) != 2:
                    raise RequestError("ipaddr must be [src, dst]")
                targets = policies.by_addresses(str(ip[0]), str(ip[1]), phase)
            else:
                raise RequestError("say which tunnels to activate: numlist=, namelist=, remid=, ipaddr= or autostart")
        except (LookupError_, PolicyError) as e:
            raise RequestError(str(e)) from None
        results = m.activate(targets, phase)
        if not args.get("wait"):
            return {"results": results}
        timeout = args.get("timeout", DEFAULT_WAIT_S)
        if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_WAIT_S:
            raise RequestError(f"timeout must be between 0 and {MAX_WAIT_S:.0f} seconds")
        futs = m.waiters_for(results, phase)
        timed_out = False
        if futs:
            _done, pending = await asyncio.wait(futs, timeout=float(timeout))
            timed_out = bool(pending)
            for f in pending:
                f.cancel()
        return {"results": m.outcome(results), "timed_out": timed_out}


def _file_signature(db: Path) -> tuple[object, ...]:
    # Runs for every new negotiation: os.stat on plain strings, no Path objects built per call.
    sig: list[object] = []
    name = os.fspath(db)
    for p in (name, name + "-wal"):
        try:
            st = os.stat(p)
        except OSError:
            sig.append(None)
        else:
            sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    v = args.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise RequestError(f"{key} must be a string")
    return v


def _opt_phase(args: dict[str, Any]) -> int | None:
    v = args.get("phase")
    if v is None:
        return None
    if str(v) not in ("1", "2"):
        raise RequestError(f"phase={v} is not valid here; use phase=1 or phase=2")
    return int(v)


def _opt_numbers(args: dict[str, Any]) -> list[int] | None:
    v = args.get("numlist")
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v):
        raise RequestError("numlist must be a list of positive tunnel numbers")
    return list(v)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.rundir is not None:
        os.environ["IKE_RUNDIR"] = str(ns.rundir)
    try:
        return asyncio.run(Daemon(ns).run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
