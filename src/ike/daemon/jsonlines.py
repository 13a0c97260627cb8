"""JSON for the control socket's `ike` side, without importing `json`.

`ike` is a short-lived command and its start-up is most of what a user waits for: `import json`
brings `json.decoder`, which imports `re` and `enum` and compiles its patterns, about a third of
`ike`'s own start-up (docs/performance.md). The C scanner and string quoting of `_json`, which
`json` itself uses, need none of that. The format is plain JSON either way; where `_json` is
missing (not CPython) this falls back to `json`.

`dumps` is for small messages (requests); iked encodes its replies with `json`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Context:
    """What `_json.make_scanner` reads from a JSONDecoder: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")


_scan: Any
try:
    import _json

    _scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # it reads only these attributes
    _quote = _json.encode_basestring_ascii
except (ImportError, AttributeError):  # pragma: no cover - other Pythons
    _scan = None

_WS = " \t\n\r"


def loads(text: str) -> Any:
    """One JSON value; ValueError if `text` is anything else."""
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"no JSON value at offset {start}") from None
    if text[end:].strip(_WS):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON of None, bool, int, finite float, str, list, tuple and dicts with str keys."""
    if _scan is None:  # pragma: no cover
        import json

        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return str(_quote(obj))
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError(f"{obj!r} has no JSON form")
        return float.__repr__(obj)
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(x) for x in obj) + "]"
    if isinstance(obj, dict):
        parts = []
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, not {type(k).__name__}")
            parts.append(f"{_quote(k)}:{dumps(v)}")
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"{type(obj).__name__} has no JSON form")
