"""`ikedb`: put and get the tunnel-definition database as XML (docs/database.md).

    ikedb put [-F] [-s] FILE           write FILE (all of it, or nothing); -F overwrites, -s swaps sides
    ikedb get [-r] [-s] [-t TYPE [-n NAME]] [--cert F --key F [--ca F]]
    ikedb delete -t TYPE -n NAME

The AIX spellings `ikedb -p[F][s] FILE`, `ikedb -g[r][s] ...` and `ikedb -d -t TYPE -n NAME` work too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ike.db.model import DM_POLICY, GROUP, KINDS, KM_POLICY, PHASE1, PHASE2, PSK, Definitions, StoreError

if TYPE_CHECKING:
    from ike.db.store import Store

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _aix_to_sub(argv: list[str]) -> list[str]:
    """Translate `-pF file` style (AIX) into the subcommand style."""
    if not argv or not argv[0].startswith("-") or argv[0].startswith("--") or len(argv[0]) < 2:
        return argv
    head, rest = argv[0], argv[1:]
    verb = {"p": "put", "g": "get", "d": "delete"}.get(head[1])
    if verb is None:
        return argv
    return [verb, *[f"-{c}" for c in head[2:]], *rest]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ikedb", description="Put and get the IKE tunnel-definition database as XML.")
    sub = p.add_subparsers(dest="verb", required=True)
    put = sub.add_parser("put", help="write an XML file into the database (all of it or nothing)")
    put.add_argument("-F", dest="force", action="store_true", help="overwrite entries that already exist")
    put.add_argument("-s", dest="swap", action="store_true", help="swap local and remote (import a peer's export)")
    put.add_argument("file", help="the XML file, or - for standard input")
    get = sub.add_parser("get", help="print the database (or part of it) as XML")
    get.add_argument("-t", dest="type", choices=KINDS, help="only entries of this type")
    get.add_argument("-n", dest="name", help="only the entry with this name (IKEPresharedKey: the identity)")
    get.add_argument("-r", dest="recursive", action="store_true", help="also the entries the selected ones refer to")
    get.add_argument(
        "-s",
        dest="swap",
        action="store_true",
        help="swap local and remote so the output configures the peer (implies -r)",
    )
    get.add_argument("--cert", help="with -s: the peer's certificate file")
    get.add_argument("--key", help="with -s: the peer's private key file")
    get.add_argument("--ca", help="with -s: the peer's CA certificate file")
    get.add_argument(
        "-o", dest="output", help="write to this file (created anew, mode 0600) instead of standard output"
    )
    de = sub.add_parser("delete", help="delete one entry")
    de.add_argument("-t", dest="type", choices=KINDS, required=True)
    de.add_argument("-n", dest="name", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(_aix_to_sub(args_in))
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    if os.geteuid() != 0:
        print("ikedb: you must be root to use ikedb (the database holds pre-shared keys)", file=sys.stderr)
        return EXIT_FAIL
    from ike.db.schema import SchemaError
    from ike.db.store import NoDatabase, Store

    try:
        # Only put may create the database; get and delete on a missing file say so.
        store = Store(create=args.verb == "put")
    except NoDatabase as e:
        print(f"ikedb: {e}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, SchemaError) as e:
        print(f"ikedb: cannot open the database: {e}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as e:  # sqlite3.DatabaseError: not a database, corrupt
        print(f"ikedb: cannot open the database {os.environ.get('IKE_DB', '')}: {e}", file=sys.stderr)
        return EXIT_FAIL
    try:
        if args.verb == "put":
            return _put(store, args)
        if args.verb == "get":
            return _get(store, args)
        return _delete(store, args)
    finally:
        store.close()


def _put(store: Store, args: argparse.Namespace) -> int:
    from ike.db.xmlio import XmlError, problems_to_lines, read_definitions, swap

    name = "<stdin>" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        print(f"ikedb: cannot read {name}: {e.strerror}", file=sys.stderr)
        return EXIT_FAIL
    base = Path.cwd() if args.file == "-" else Path(args.file).resolve().parent
    try:
        defs, lines = read_definitions(data, name, base)
        if args.swap:
            notes: list[str] = []
            defs = swap(defs, notes)
            for note in notes:
                print(f"ikedb: {name}: note: {note}", file=sys.stderr)
        if defs.is_empty():
            print(f"ikedb: {name}: no entries; nothing to do", file=sys.stderr)
            return EXIT_FAIL
        store.put(defs, force=args.force)
    except XmlError as e:
        print(f"{e}\nikedb: {name}: nothing was written", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as e:
        print(f"ikedb: {name}: {e}; nothing was written", file=sys.stderr)
        return EXIT_FAIL
    except StoreError as e:
        for line, msg in problems_to_lines(e.problems, lines):
            print(f"{name}:{line}: {msg}" if line else f"{name}: {msg}", file=sys.stderr)
        print(f"ikedb: {name}: nothing was written", file=sys.stderr)
        return EXIT_FAIL
    for t in defs.phase1:
        for f in (t.cert_file, t.key_file, t.ca_file):
            if f is not None and not os.path.isfile(f):
                print(f"ikedb: warning: IKETunnel {t.name!r}: {f} does not exist yet", file=sys.stderr)
    n = len(defs.km_policies) + len(defs.dm_policies) + len(defs.phase1) + len(defs.phase2)
    n += len(defs.groups) + len(defs.psks)
    print(f"ikedb: {name}: {n} entr{'y' if n == 1 else 'ies'} written")
    return EXIT_OK


def select(defs: Definitions, kind: str | None, name: str | None, recursive: bool) -> Definitions:
    """The entries named by -t/-n, plus (recursive) what they refer to. Raises KeyError if -n finds nothing."""
    if kind is None:
        return defs
    from ike.policy import Identity

    def pick(items: list, key: str) -> list:  # type: ignore[type-arg]
        return [x for x in items if name is None or getattr(x, key) == name]

    out = Definitions()
    if kind == KM_POLICY:
        out.km_policies = pick(defs.km_policies, "name")
    elif kind == DM_POLICY:
        out.dm_policies = pick(defs.dm_policies, "name")
    elif kind == PHASE1:
        out.phase1 = pick(defs.phase1, "name")
    elif kind == PHASE2:
        out.phase2 = pick(defs.phase2, "name")
    elif kind == GROUP:
        out.groups = pick(defs.groups, "name")
    elif kind == PSK:
        want = Identity.parse(name) if name is not None else None
        out.psks = [k for k in defs.psks if want is None or k.identity == want]
    if name is not None and out.is_empty():
        raise KeyError(f"no {kind} named {name!r} in the database")
    if recursive:
        p1_names = {t.name for t in out.phase1} | {t.phase1 for t in out.phase2}
        out.phase1 = [t for t in defs.phase1 if t.name in p1_names]
        km = {t.policy for t in out.phase1} | {p.name for p in out.km_policies}
        dm = {t.policy for t in out.phase2} | {p.name for p in out.dm_policies}
        out.km_policies = [p for p in defs.km_policies if p.name in km]
        out.dm_policies = [p for p in defs.dm_policies if p.name in dm]
        remotes = {t.remote_id for t in out.phase1}
        have = {k.identity for k in out.psks}
        out.psks += [k for k in defs.psks if k.identity in remotes and k.identity not in have]
    return out


def _get(store: Store, args: argparse.Namespace) -> int:
    from ike.db.xmlio import swap, write_definitions

    if args.name is not None and args.type is None:
        print("ikedb: -n needs -t TYPE (which kind of entry the name is)", file=sys.stderr)
        return EXIT_USAGE
    if (args.cert or args.key or args.ca) and not args.swap:
        print("ikedb: --cert/--key/--ca replace the certificate files in a swapped export: add -s", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.cert) != bool(args.key):
        print("ikedb: give --cert and --key together", file=sys.stderr)
        return EXIT_USAGE
    try:
        defs = select(store.definitions(), args.type, args.name, args.recursive or args.swap)
        if args.swap:
            notes: list[str] = []
            defs = swap(defs, notes)
            for note in notes:
                print(f"ikedb: note: {note}", file=sys.stderr)
            if args.cert:
                defs.phase1 = [
                    replace(
                        t,
                        cert_file=os.path.abspath(args.cert),
                        key_file=os.path.abspath(args.key),
                        ca_file=os.path.abspath(args.ca) if args.ca else t.ca_file,
                    )
                    if t.cert_file is not None
                    else t
                    for t in defs.phase1
                ]
    except KeyError as e:
        print(f"ikedb: {e.args[0]}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as e:
        print(f"ikedb: {e}", file=sys.stderr)
        return EXIT_FAIL
    text = write_definitions(defs)
    if args.output:
        try:
            write_private(args.output, text)
        except OSError as e:
            why = e.strerror or str(e)
            fix = (
                f"give -o a file name in it, such as {os.path.join(args.output, 'ike-export.xml')}"
                if isinstance(e, IsADirectoryError)
                else "give -o the name of a file in an existing directory that root can write"
            )
            print(
                f"ikedb: cannot write {args.output}: {why}; {fix} (or leave out -o for standard output); "
                "nothing was written",
                file=sys.stderr,
            )
            return EXIT_FAIL
    else:
        sys.stdout.write(text)
    return EXIT_OK


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` as a new mode 0600 file that replaces any old one.

    The export carries pre-shared keys. Truncating an existing file would keep its mode (0644: keys
    readable by all), and even a chmod leaves them to anyone who already has it open; a new file
    renamed over the old one is never readable by others, not even briefly. A symbolic link is
    followed, so the file it names is replaced and the link stays."""
    import tempfile

    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "it is a directory", path)
    if os.path.lexists(target) and not os.path.isfile(target):
        raise OSError(errno.EINVAL, "it exists and is not a regular file", path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".ikedb-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _delete(store: Store, args: argparse.Namespace) -> int:
    try:
        store.delete(args.type, args.name)
    except StoreError as e:
        print(f"ikedb: {e}; nothing was deleted", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as e:
        print(f"ikedb: {args.type} {args.name!r}: {e}", file=sys.stderr)
        return EXIT_FAIL
    print(f"ikedb: {args.type} {args.name!r} deleted")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
