"""The AIX `ike` grammar: flags in any order, numlist ranges, and every combination the manual forbids."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ike.cli.grammar import MAX_LIST, Command, UsageError, parse, parse_numlist


def test_manual_examples_parse() -> None:
    c = parse(["cmd=activate", "numlist=1,3,5-7"])
    assert c.cmd == "activate" and c.numlist == (1, 3, 5, 6, 7) and c.phase is None
    c = parse(["cmd=activate", "phase=2", "ipaddr=198.18.0.1,198.18.0.2"])
    assert c.ipaddr == ("198.18.0.1", "198.18.0.2") and c.phase == "2"
    assert parse(["cmd=activate", "phase=1", "numlist=1,2"]).numlist == (1, 2)
    assert parse(["cmd=activate", "phase=2", "numlist=3-5,8"]).numlist == (3, 4, 5, 8)
    assert parse(["cmd=activate", "phase=1", "remid=198.18.0.2"]).remid == "198.18.0.2"
    assert parse(["cmd=activate", "phase=2", "remid=198.19.2.0,255.255.255.0"]).remid == "198.19.2.0,255.255.255.0"
    c = parse(["cmd=list", "phase=2", "numlist=1-3", "db"])
    assert (c.cmd, c.phase, c.numlist, c.db) == ("list", "2", (1, 2, 3), True)
    c = parse(["cmd=list", "phase=1+", "role=r", "verbose"])
    assert (c.role, c.verbose, c.db) == ("r", True, False)
    assert parse(["cmd=remove", "phase=1", "numlist=1-3"]).numlist == (1, 2, 3)
    c = parse(["cmd=remove", "all"])
    assert c.all and c.phase is None and c.numlist is None
    assert parse(["cmd=remove", "phase=2", "all"]).all
    assert parse(["cmd=log"]) == Command(cmd="log")
    assert parse(["cmd=list", "db"]) != Command(cmd="list")
    assert "cmd='log'" in repr(parse(["cmd=log"]))
    c = parse(["cmd=activate", "autostart"])
    assert c.autostart and not c.wait
    c = parse(["cmd=activate", "phase=1", "namelist=gw-a,gw-b", "wait"])
    assert c.namelist == ("gw-a", "gw-b") and c.wait
    assert parse(["cmd=list", "db", "format=json"]).format == "json"


def test_any_order_gives_the_same_command() -> None:
    words = ["cmd=list", "phase=2", "numlist=1-3", "db", "verbose", "format=json"]
    first = parse(words)
    for perm in itertools.permutations(words):
        assert parse(list(perm)) == first


@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 20)), min_size=1, max_size=12))
def test_numlist_matches_the_set_it_describes(items: list[tuple[int, int]]) -> None:
    text = ",".join(str(lo) if span == 0 else f"{lo}-{lo + span}" for lo, span in items)
    expected = sorted({n for lo, span in items for n in range(lo, lo + span + 1)})
    assert list(parse_numlist(text)) == expected
    assert parse(["cmd=activate", f"numlist={text}"]).numlist == tuple(expected)


@given(st.integers(2, 10_000), st.integers(1, 10_000))
def test_reversed_range_is_refused(hi: int, gap: int) -> None:
    lo = hi + gap
    with pytest.raises(UsageError, match="reversed"):
        parse_numlist(f"{lo}-{hi}")


@given(st.text(alphabet="0123456789,-+ ax", min_size=0, max_size=12))
def test_numlist_either_parses_exactly_or_says_why(text: str) -> None:
    try:
        numbers = parse_numlist(text)
    except UsageError as e:
        assert "numlist" in str(e)
        return
    # What parsed must be exactly the canonical form of itself: digits, commas, dashes only.
    assert set(text) <= set("0123456789,-")
    assert numbers == tuple(sorted(set(numbers))) and all(n >= 1 for n in numbers)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("1,,2", "empty element"),
        (",1", "empty element"),
        ("1,", "empty element"),
        ("5-3", "reversed"),
        ("0", "from 1"),
        ("0-3", "from 1"),
        ("a", "not a tunnel number"),
        ("1-", "not a tunnel number"),
        ("-1", "not a tunnel number"),
        ("1-2-3", "not a tunnel number"),
        ("+1", "not a tunnel number"),
        (" 1", "not a tunnel number"),
        ("1_0", "not a tunnel number"),
        ("99999999999", "from 1"),
        (f"1-{MAX_LIST + 1}", "more than"),
    ],
)
def test_bad_numlists(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse(["cmd=list", "db", f"numlist={text}"] if text else ["cmd=list", "db", "numlist="])


# Every rule the manual states, with a fragment of its wording that the message must quote.
FORBIDDEN = [
    (
        ["cmd=activate", "remid=198.18.0.2", "ipaddr=198.18.0.1,198.18.0.2"],
        "cannot be used in conjunction with ipaddr or numlist",
    ),
    (["cmd=activate", "remid=198.18.0.2", "numlist=1"], "cannot be used in conjunction with ipaddr or numlist"),
    (["cmd=list", "remid=198.18.0.2"], "It can only be used with activate subcommand"),
    (["cmd=remove", "remid=198.18.0.2"], "It can only be used with activate subcommand"),
    (["cmd=activate", "autostart", "phase=1"], "does not work in conjunction with any other flags"),
    (["cmd=activate", "autostart", "numlist=1"], "does not work in conjunction with any other flags"),
    (["cmd=activate", "autostart", "remid=x.example"], "does not work in conjunction with any other flags"),
    (
        ["cmd=activate", "autostart", "ipaddr=198.18.0.1,198.18.0.2"],
        "does not work in conjunction with any other flags",
    ),
    (["cmd=activate", "autostart", "phase=2", "namelist=a"], "does not work in conjunction with any other flags"),
    (["cmd=list", "db", "role=i"], "This cannot be used in conjunction with role"),
    (["cmd=list", "role=r", "db", "verbose"], "This cannot be used in conjunction with role"),
    (["cmd=remove", "all", "numlist=1-3"], "This parameter does not work in conjunction with numlist"),
    (["cmd=remove", "db", "all", "phase=2", "numlist=1"], "This parameter does not work in conjunction with numlist"),
    (["cmd=activate", "namelist=gw-a"], "This flag requires the use of the phase flag"),
]


@pytest.mark.parametrize(("argv", "rule"), FORBIDDEN)
def test_forbidden_combinations_quote_the_rule(argv: list[str], rule: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(argv)
    assert rule in str(e.value)
    # Order must not matter for a refusal either.
    with pytest.raises(UsageError):
        parse(list(reversed(argv)))


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        ([], "missing cmd="),
        (["phase=1"], "missing cmd="),
        (["cmd=start"], "unknown subcommand cmd=start"),
        (["cmd=list", "bogus=1"], "unknown flag bogus=1"),
        (["cmd=list", "dbx"], "unknown word 'dbx'"),
        (["cmd=list", "db=yes"], "bare word"),
        (["cmd=list", "phase"], "needs a value"),
        (["cmd=list", "phase=3"], "phase=3 is not valid for cmd=list"),
        (["cmd=activate", "phase=1+"], "phase=1+ is not valid for cmd=activate"),
        (["cmd=remove", "phase=1+"], "phase=1+ is not valid for cmd=remove"),
        (["cmd=list", "phase=1", "phase=2"], "given twice"),
        (["cmd=list", "db", "db"], "given twice"),
        (["cmd=list", "role=x"], "role=x"),
        (["cmd=list", "format=xml"], "format=xml"),
        (["cmd=list", "phase="], "empty value"),
        (["cmd=activate", "ipaddr=198.18.0.1"], "two addresses"),
        (["cmd=activate", "ipaddr=198.18.0.1,2001:db8::1"], "must both be IPv4 or both IPv6"),
        (["cmd=activate", "ipaddr=198.18.0.1,gw-b"], "not an IPv4 or IPv6 address"),
        (["cmd=activate", "phase=1", "namelist=a,,b"], "empty tunnel name"),
        (["cmd=activate", "phase=1", "namelist=a", "numlist=1"], "choose tunnels one way"),
        (["cmd=activate", "db"], "db does not apply to cmd=activate"),
        (["cmd=activate", "verbose"], "verbose does not apply to cmd=activate"),
        (["cmd=activate", "all"], "all does not apply to cmd=activate"),
        (["cmd=list", "autostart"], "autostart does not apply to cmd=list"),
        (["cmd=list", "all"], "all does not apply to cmd=list"),
        (["cmd=list", "ipaddr=198.18.0.1,198.18.0.2"], "ipaddr= does not apply to cmd=list"),
        (["cmd=list", "phase=1", "namelist=a"], "namelist= does not apply to cmd=list"),
        (["cmd=remove", "verbose"], "verbose does not apply to cmd=remove"),
        (["cmd=remove", "role=i"], "role= does not apply to cmd=remove"),
        (["cmd=log", "verbose"], "verbose does not apply to cmd=log"),
        (["cmd=log", "phase=1"], "phase= does not apply to cmd=log"),
        (["CMD=list"], "unknown flag"),
    ],
)
def test_bad_command_lines(argv: list[str], why: str) -> None:
    with pytest.raises(UsageError, match=re.escape(why)):
        parse(argv)
