"""Our daemon, iked, inside a test namespace, with its own database, run directory and log.

    with two_hosts() as (a, b), Iked(a) as ia, Iked(b) as ib:
        ia.put(xml_for_a); ib.put(xml_for_b)        # ikedb put (before or after start)
        ia.ike("cmd=activate", "phase=2", "numlist=1", "wait")
        print(ia.ike("cmd=list").stdout)

Every command runs with the test's own interpreter (`python -c "from ike... import main"`), so the
code under test is the checkout being tested, whatever `ike` on PATH is. IKE_DB, IKE_RUNDIR and
IKE_CONF point into the working directory, so several daemons share the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .netns import CommandError, Host


def _entry(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


IKED = "ike.daemon.main"
IKE = "ike.cli.main"
IKEDB = "ike.cli.ikedb"


class IkedError(RuntimeError):
    """iked did not start, or died; the message carries its log."""


class Iked:
    """iked in `host`. `dataplane` is passed as --dataplane; `listen` defaults to the host's outer
    addresses. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        host: Host,
        workdir: Path | None = None,
        dataplane: str = "userspace",
        log_level: str = "information",
        listen: list[str] | None = None,
        autostart: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.host = host
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{host.name}-iked-")) if workdir is None else workdir
        self.rundir = self.workdir / "run"
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.db = self.workdir / "ike.db"
        self.conf = self.workdir / "isakmpd.conf"
        self.log_path = self.workdir / "iked.log"
        self.out_path = self.workdir / "iked.out"
        self.conf.write_text(f"log_level = {log_level}\nlog_destination = {self.log_path}\n")
        self.dataplane = dataplane
        self.listen = listen if listen is not None else [x for x in (host.outer4, host.outer6) if x]
        self.autostart = autostart
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"IKE_DB": str(self.db), "IKE_RUNDIR": str(self.rundir), "IKE_CONF": str(self.conf)}

    @property
    def socket_path(self) -> Path:
        return self.rundir / "iked.sock"

    def __enter__(self) -> Iked:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 20) -> None:
        cmd = [*_entry(IKED), "--dataplane", self.dataplane]
        for addr in self.listen:
            cmd += ["--listen", addr]
        if not self.autostart:
            cmd.append("--no-autostart")
        cmd += self.extra_args
        with self.out_path.open("ab") as out:
            self.proc = self.host.popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                raise IkedError(f"iked in {self.host.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise IkedError(f"iked in {self.host.name}: no control socket after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (iked deletes its SAs and exits), SIGKILL after `timeout`; returns the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            rc = self.proc.returncode
        self.proc = None
        if self._own_dir and not os.environ.get("IKETEST_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 200) -> str:
        lines: list[str] = []
        for p in (self.out_path, self.log_path):
            if p.exists():
                lines += p.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def _run(
        self, module: str, args: tuple[str, ...], check: bool, timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return self.host.run([*_entry(module), *args], check=check, timeout=timeout, env=self.env, input=input)
        except CommandError as e:
            raise CommandError(
                e.returncode,
                [module.rsplit(".", 1)[-1], *args],
                e.stdout,
                f"{e.stderr}\n--- iked log ---\n{self.log(60)}",
            ) from None

    def ike(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `ike ARGS` against this daemon/database (raises CommandError with iked's log on failure)."""
        return self._run(IKE, args, check, timeout)

    def ikedb(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run(IKEDB, args, check, timeout, input)

    def put(self, xml: str | Path, force: bool = False) -> subprocess.CompletedProcess[str]:
        """`ikedb put` an XML definition given as text or as a file path."""
        flags = ["-F"] if force else []
        if isinstance(xml, Path):
            return self.ikedb("put", *flags, str(xml))
        return self.ikedb("put", *flags, "-", input=xml)
