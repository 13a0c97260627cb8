"""The AIX `ike` command grammar: `cmd=` word, `key=value` flags and bare words, in any order.

Every combination the AIX manual forbids is refused here, with a message that quotes the rule, so
that the daemon half (cli/active.py) and the database half (cli/dblist.py) only ever see commands
that make sense. Defaults (e.g. list's phase 1+) are applied by the consumer, not here.
"""

from __future__ import annotations

COMMANDS = ("activate", "list", "remove", "log")
VALUE_FLAGS = ("cmd", "phase", "numlist", "namelist", "remid", "ipaddr", "role", "format")
BARE_WORDS = ("db", "all", "verbose", "autostart", "wait")

# Which flags each subcommand takes, as its manual synopsis says (plus format= and wait, additions).
ALLOWED: dict[str, frozenset[str]] = {
    "activate": frozenset({"phase", "numlist", "namelist", "remid", "ipaddr", "autostart", "wait", "format"}),
    "list": frozenset({"phase", "numlist", "db", "role", "verbose", "format"}),
    "remove": frozenset({"phase", "numlist", "all", "db", "format"}),
    "log": frozenset(),
}
PHASES: dict[str, tuple[str, ...]] = {"activate": ("1", "2"), "list": ("1", "1+", "2"), "remove": ("1", "2")}
SYNOPSIS: dict[str, str] = {
    "activate": "ike cmd=activate [phase=1|2] [numlist=tunnel_num_list] [remid=remote_id] "
    "[ipaddr=src_addr,dst_addr] [autostart] [namelist=name,...] [wait] [format=text|json]",
    "list": "ike cmd=list [phase=1|1+|2] [numlist=tunnel_num_list] [db | role=i|r] [verbose] [format=text|json]",
    "remove": "ike cmd=remove [phase=1|2] [numlist=tunnel_num_list] [all] [db] [format=text|json]",
    "log": "ike cmd=log",
}
USAGE = "usage:\n" + "\n".join(f"  {s}" for s in SYNOPSIS.values())

# Tunnel numbers are SQLite integers handed out from 1; a list longer than this is surely a typo
# (1-99999999) and would only burn memory.
MAX_NUMBER = 2**31 - 1
MAX_LIST = 100_000
# Character sets, not regular expressions: `re` would cost every `ike` command its import.
_DIGITS = frozenset("0123456789")
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@:/+-")
_NAME_REST = _NAME_FIRST | frozenset(" =")


def _is_number(s: str) -> bool:
    return bool(s) and _DIGITS.issuperset(s)


def _is_name(s: str) -> bool:
    return bool(s) and s[0] in _NAME_FIRST and _NAME_REST.issuperset(s)


class Command:
    """A parsed command line. A plain class, not a dataclass: importing `dataclasses` alone costs
    `ike` about 30 ms of start-up here, and `ike` must start fast (see docs/performance.md)."""

    __slots__ = (
        "all",
        "autostart",
        "cmd",
        "db",
        "format",
        "ipaddr",
        "namelist",
        "numlist",
        "phase",
        "remid",
        "role",
        "verbose",
        "wait",
    )

    def __init__(
        self,
        *,
        cmd: str,
        phase: str | None = None,
        numlist: tuple[int, ...] | None = None,
        namelist: tuple[str, ...] | None = None,
        remid: str | None = None,
        ipaddr: tuple[str, str] | None = None,
        db: bool = False,
        all: bool = False,
        verbose: bool = False,
        autostart: bool = False,
        wait: bool = False,
        role: str | None = None,
        format: str = "text",
    ) -> None:
        self.cmd = cmd  # "activate" | "list" | "remove" | "log"
        self.phase = phase  # "1" | "2" | "1+" | None (as given; defaults applied by the consumer per the manual)
        self.numlist = numlist
        self.namelist = namelist
        self.remid = remid
        self.ipaddr = ipaddr
        self.db = db
        self.all = all
        self.verbose = verbose
        self.autostart = autostart
        self.wait = wait  # addition: activate blocks until established/failed
        self.role = role  # "i" | "r"
        self.format = format  # "text" | "json"

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Command) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Command(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"


class UsageError(Exception):
    """A command line that breaks the grammar; the message quotes the broken rule."""


def parse_numlist(text: str) -> tuple[int, ...]:
    """`1,3,5-7` -> (1, 3, 5, 6, 7): sorted, without duplicates."""
    if not text:
        raise UsageError("numlist is empty: give tunnel numbers such as numlist=1,3,5-7")
    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise UsageError(f"numlist={text}: empty element between commas; write e.g. numlist=1,3,5-7")
        lo_s, dash, hi_s = item.partition("-")
        if not _is_number(lo_s) or (dash and not _is_number(hi_s)):
            raise UsageError(
                f"numlist={text}: {item!r} is not a tunnel number or a range n-m (only digits, ',' and '-' are allowed)"
            )
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
        if lo < 1 or hi > MAX_NUMBER:
            raise UsageError(f"numlist={text}: tunnel numbers run from 1 to {MAX_NUMBER}, {item!r} is outside")
        if lo > hi:
            raise UsageError(f"numlist={text}: range {item} is reversed; write {hi}-{lo}")
        if hi - lo + 1 + len(out) > MAX_LIST:
            raise UsageError(f"numlist={text}: more than {MAX_LIST} tunnel numbers; narrow the ranges")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def _parse_namelist(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not names or any(not n for n in names):
        raise UsageError(f"namelist={text}: empty tunnel name; write namelist=name1,name2")
    seen: list[str] = []
    for n in names:
        if not _is_name(n):
            raise UsageError(f"namelist={text}: {n!r} is not a tunnel name")
        if n not in seen:
            seen.append(n)
    return tuple(seen)


def _parse_ipaddr(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) != 2:
        raise UsageError(f"ipaddr={text}: give two addresses, ipaddr=src_addr,dst_addr")
    import ipaddress  # here: most command lines have no ipaddr=, and the import costs start-up time

    addrs = []
    for p in parts:
        try:
            addrs.append(ipaddress.ip_address(p.strip()))
        except ValueError:
            raise UsageError(f"ipaddr={text}: {p!r} is not an IPv4 or IPv6 address") from None
    if addrs[0].version != addrs[1].version:
        raise UsageError(f"ipaddr={text}: source and destination must both be IPv4 or both IPv6")
    return str(addrs[0]), str(addrs[1])


def _refuse(rule: str, why: str) -> UsageError:
    return UsageError(f'{why} (the manual: "{rule}")')


def parse(argv: list[str]) -> Command:
    values: dict[str, str] = {}
    words: set[str] = set()
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq:
            if key not in VALUE_FLAGS:
                hint = f"; {key} is a bare word, write it without '='" if key in BARE_WORDS else ""
                raise UsageError(f"unknown flag {key}={value}{hint}\n{USAGE}")
            if key in values:
                raise UsageError(f"{key}= given twice ({key}={values[key]} and {arg}); give it once")
            if value == "":
                raise UsageError(f"{key}= has an empty value")
            values[key] = value
        else:
            if arg not in BARE_WORDS:
                hint = f"; {arg} needs a value, write {arg}=..." if arg in VALUE_FLAGS else ""
                raise UsageError(f"unknown word {arg!r}{hint}\n{USAGE}")
            if arg in words:
                raise UsageError(f"{arg} given twice; give it once")
            words.add(arg)

    if "cmd" not in values:
        raise UsageError(f"missing cmd=: say what to do\n{USAGE}")
    cmd = values.pop("cmd")
    if cmd not in COMMANDS:
        raise UsageError(f"unknown subcommand cmd={cmd}; use one of {', '.join(COMMANDS)}\n{USAGE}")

    given = set(values) | words
    if "remid" in given and cmd != "activate":
        raise _refuse(
            "It can only be used with activate subcommand, it cannot be used in conjunction with ipaddr "
            "or numlist flag.",
            f"remid does not apply to cmd={cmd}",
        )
    for flag in sorted(given - ALLOWED[cmd]):
        shown = flag if flag in BARE_WORDS else f"{flag}="
        takers = [c for c in COMMANDS if flag in ALLOWED[c]]
        raise UsageError(
            f"{shown} does not apply to cmd={cmd} (it is a flag of cmd={'/'.join(takers)})\n  {SYNOPSIS[cmd]}"
        )

    phase = values.get("phase")
    if phase is not None and phase not in PHASES[cmd]:
        raise UsageError(f"phase={phase} is not valid for cmd={cmd}; use phase={'|'.join(PHASES[cmd])}")

    numlist = parse_numlist(values["numlist"]) if "numlist" in values else None
    namelist = _parse_namelist(values["namelist"]) if "namelist" in values else None
    ipaddr = _parse_ipaddr(values["ipaddr"]) if "ipaddr" in values else None
    remid = values.get("remid")
    if remid is not None and not remid.strip():
        raise UsageError("remid= is empty; give a remote ID, subnet (id,mask), range (start,end) or group name")

    role = values.get("role")
    if role is not None and role not in ("i", "r"):
        raise UsageError(f"role={role}: use role=i (initiated here) or role=r (responded here)")
    fmt = values.get("format", "text")
    if fmt not in ("text", "json"):
        raise UsageError(f"format={fmt}: use format=text or format=json")

    # The combinations the manual forbids, each with the manual's own words.
    if remid is not None and (ipaddr is not None or numlist is not None):
        other = "ipaddr" if ipaddr is not None else "numlist"
        raise _refuse(
            "It can only be used with activate subcommand, it cannot be used in conjunction with ipaddr "
            "or numlist flag.",
            f"remid cannot be combined with {other}",
        )
    if "autostart" in words:
        others = sorted(given & {"phase", "numlist", "namelist", "remid", "ipaddr"})
        if others:
            raise _refuse(
                "The autostart flag does not work in conjunction with any other flags pertaining to the "
                "activate subcommand.",
                f"autostart cannot be combined with {', '.join(others)}",
            )
    if namelist is not None:
        if phase is None:
            raise _refuse(
                "Specifies a tunnel name or comma-separated list of tunnel names to be activated. "
                "This flag requires the use of the phase flag.",
                "namelist needs phase=1 or phase=2",
            )
        clash = sorted(given & {"numlist", "remid", "ipaddr"})
        if clash:
            # Our rule, not the manual's: each of these picks tunnels, and two pickers are ambiguous.
            raise UsageError(
                f"namelist cannot be combined with {', '.join(clash)}: choose tunnels one way "
                "(namelist, numlist, remid or ipaddr)"
            )
    if "db" in words and role is not None:
        raise _refuse(
            "Shows the entries in the database. If this flag is omitted, only active tunnels are "
            "displayed. This cannot be used in conjunction with role.",
            "db cannot be combined with role",
        )
    if "all" in words and numlist is not None:
        raise _refuse(
            "Removes all entries from the IKE Tunnel Definition database. This parameter does not work "
            "in conjunction with numlist.",
            "all cannot be combined with numlist",
        )

    return Command(
        cmd=cmd,
        phase=phase,
        numlist=numlist,
        namelist=namelist,
        remid=remid,
        ipaddr=ipaddr,
        db="db" in words,
        all="all" in words,
        verbose="verbose" in words,
        autostart="autostart" in words,
        wait="wait" in words,
        role=role,
        format=fmt,
    )
