"""Caches that keep secret material from one negotiation to the next (a pre-shared key's keyed
PRF, parsed private keys) register their clear function here. The daemon empties them all when
the tunnel definitions change: a secret removed from the database then leaves memory at once,
not whenever a bounded cache happens to evict it."""

from __future__ import annotations

from collections.abc import Callable

_CLEARERS: list[Callable[[], None]] = []


def register(clear: Callable[[], None]) -> None:
    _CLEARERS.append(clear)


def forget_all() -> None:
    for clear in _CLEARERS:
        clear()
