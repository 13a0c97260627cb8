"""The `ike` command: parse the AIX grammar, refuse non-root, then run `db` commands here and hand
everything else to the daemon half (ike.cli.active)."""

from __future__ import annotations

import os
import sys

from ike.cli.grammar import USAGE, UsageError, parse

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_NOT_ROOT = 4  # as ike.cli.active's (3 is iked not running): the same for db and daemon commands


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"], ["help"]):
        print(USAGE)
        return EXIT_OK
    try:
        command = parse(args)
    except UsageError as e:
        print(f"ike: {e}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("ike: you must have root access to use the ike command (run it as root)", file=sys.stderr)
        return EXIT_NOT_ROOT
    try:
        if command.db:
            from ike.cli.dblist import run_db

            return run_db(command)
        try:
            from ike.cli.active import run  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            if e.name not in ("ike.cli.active",):
                print(f"ike: cannot load the daemon part: {e}", file=sys.stderr)
                return EXIT_FAIL
            print(
                f"ike: cmd={command.cmd} works on the tunnel manager, and the daemon part is not available "
                "yet; for the database use `ike cmd=list db` or `ike cmd=remove db`",
                file=sys.stderr,
            )
            return EXIT_FAIL
        return int(run(command))
    except BrokenPipeError:
        # `ike cmd=list db | head`: the reader went away; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
