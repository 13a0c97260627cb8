"""`ike`'s JSON without `json` reads and writes what `json` does, and refuses what is not JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ike.daemon import jsonlines

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_agrees_with_json_both_ways(v: Any) -> None:
    assert jsonlines.loads(json.dumps(v)) == v
    assert jsonlines.loads(json.dumps(v, indent=2) + "\n") == v
    assert json.loads(jsonlines.dumps(v)) == v


def test_tuples_encode_as_lists_and_unicode_is_escaped() -> None:
    assert jsonlines.dumps({"ipaddr": ("198.18.0.1", "198.18.0.2")}) == '{"ipaddr":["198.18.0.1","198.18.0.2"]}'
    assert jsonlines.dumps("gw-\u00e9\n") == '"gw-\\u00e9\\n"'


@pytest.mark.parametrize("text", ["", "   ", "[1,", '{"a" 1}', "1 2", "NaN", "Infinity", "[1]x", "'a'", "\ufeff1"])
def test_what_is_not_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        jsonlines.loads(text)


@pytest.mark.parametrize("obj", [float("nan"), float("inf"), {1: "a"}, b"bytes", object()])
def test_what_has_no_json_form_is_refused(obj: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        jsonlines.dumps(obj)
