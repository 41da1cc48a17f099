"""Clocks that drive the model: the event loop's monotonic clock, or a virtual one."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    """Time source of a driver, in seconds."""

    def now(self) -> float:
        """Current time."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``deadline`` has passed."""
        ...


class LoopClock:
    """Real time: the running event loop's monotonic clock."""

    def now(self) -> float:
        """Current loop time."""
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the loop time reaches ``deadline``."""
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """Simulated time that only moves when the event loop of virtual.py advances it."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        """Current virtual time."""
        return self._now

    def advance_to(self, t: float) -> None:
        """Move time forward (never back)."""
        if t > self._now:
            self._now = t

    async def sleep_until(self, deadline: float) -> None:
        """Jump to ``deadline`` at once."""
        self.advance_to(deadline)
