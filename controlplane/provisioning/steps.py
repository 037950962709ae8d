"""``Steps``: runs the named steps of one lifecycle operation, timing each and passing its failpoints."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from controlplane.platform import Platform

T = TypeVar("T")


class Steps:
    """Runs the steps of one operation: times each one and passes the failpoints around it."""

    def __init__(self, platform: Platform) -> None:
        self._failpoints = platform.failpoints
        self.timings: list[dict[str, Any]] = []
        self.current: str | None = None

    async def run(self, name: str, action: Callable[[], Awaitable[T]]) -> T:
        self.current = name
        self._failpoints.hit(f"before:{name}")
        started = time.perf_counter()
        result = await action()
        self.timings.append({"step": name, "ms": round((time.perf_counter() - started) * 1000, 2)})
        self._failpoints.hit(f"after:{name}")
        return result
