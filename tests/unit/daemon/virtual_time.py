"""An asyncio event loop whose clock jumps ahead whenever nothing is ready, so tests of lifetimes,
rekeys and expiry run whole minutes of protocol time in a fraction of a second. Everything that
arrives (call_soon, sockets) is still handled in order; only idle waits are skipped."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _SkippingSelector:
    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._real.select(None)  # nothing scheduled: a real wait (tests never get here)
        ready = self._real.select(0)
        if not ready and timeout > 0:
            self._loop.advance(timeout)
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._selector = _SkippingSelector(self._selector, self)  # type: ignore[has-type,assignment]

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds
