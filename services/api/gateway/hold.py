"""Scale from zero: requests for an alias with nothing awake wait in a bounded line."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from services.api.gateway.body import GatewayError

Demand = Callable[[str, int], Awaitable[None]]
"""Tells the autoscaler how many requests wait for ``alias`` (called at once, then every
``demand_every_s`` while they wait)."""


@dataclass
class HoldSettings:
    """Bounds of the per-alias waiting line."""

    max_waiting: int = 100
    """Requests one gateway process holds per alias; more get 503 at once."""
    timeout_s: float = 120.0
    """How long a held request waits for an instance to wake or start."""
    poll_s: float = 0.2
    """How often a held request asks the scheduler again."""
    demand_every_s: float = 1.0


@dataclass
class _Line:
    waiting: int = 0
    last_demand: float = float("-inf")
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class HoldQueues:
    """Per-alias counters of held requests; the caller loops route → hold → route."""

    def __init__(self, settings: HoldSettings, demand: Demand,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._demand = demand
        self._clock = clock
        self._lines: dict[str, _Line] = {}
        self._pending: set[asyncio.Future[None]] = set()

    def waiting(self, alias: str) -> int:
        line = self._lines.get(alias)
        return line.waiting if line else 0

    def total_waiting(self) -> int:
        return sum(line.waiting for line in self._lines.values())

    @contextlib.contextmanager
    def enter(self, alias: str) -> Iterator[float]:
        """Join the alias's line (GatewayError 503 when full); yields the deadline."""
        line = self._lines.setdefault(alias, _Line())
        if line.waiting >= self.settings.max_waiting:
            raise GatewayError(503, f"model {alias!r} has no active instance and "
                               f"{line.waiting} requests already wait for one; retry later",
                               code="no_capacity", retry_after=5)
        line.waiting += 1
        try:
            yield self._clock() + self.settings.timeout_s
        finally:
            line.waiting -= 1
            if line.waiting == 0 and self._lines.get(alias) is line:
                del self._lines[alias]
                if line.last_demand > float("-inf"):
                    # Withdraw the demand at once: the requests are served (or refused) and
                    # would otherwise count twice, held and in flight, for a few seconds.
                    task = asyncio.ensure_future(self._demand(alias, 0))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)

    async def pause(self, alias: str, deadline: float) -> None:
        """Signal demand (rate-limited) and wait one poll interval or until woken."""
        now = self._clock()
        if now >= deadline:
            raise GatewayError(503, f"model {alias!r} has no active instance; none woke or "
                               f"started within {self.settings.timeout_s:g}s",
                               code="no_capacity", retry_after=5)
        line = self._lines.setdefault(alias, _Line())
        if now - line.last_demand >= self.settings.demand_every_s:
            line.last_demand = now
            await self._demand(alias, line.waiting)
        line.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(line.wake.wait(),
                                   min(self.settings.poll_s, max(0.0, deadline - now)))

    def notify_all(self) -> None:
        """The registry changed: every held request asks the scheduler again now."""
        for line in self._lines.values():
            line.wake.set()

    def notify(self, alias: str) -> None:
        """An instance of ``alias`` may have become active: held requests ask again now."""
        line = self._lines.get(alias)
        if line is not None:
            line.wake.set()
