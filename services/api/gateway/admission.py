"""Admission control's waiting line: which held request an engine's free slot goes to.

FIFO by default. With a TTFT target, a request that can still meet it goes before one
that already cannot (earliest arrival first among each), so a burst costs as few
requests their target as possible; a request held ``max_wait_s`` goes first whatever its
chance, which bounds the tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from services.api.gateway.body import GatewayError


def next_to_serve(arrivals: Sequence[float], now: float, *, slo_s: float | None,
                  max_wait_s: float) -> int:
    """Position in ``arrivals`` (held requests, oldest first) of the one to serve next."""
    if slo_s is None or not arrivals or now - arrivals[0] >= max_wait_s:
        return 0
    budget = slo_s * 0.6  # room left for the prefill once it is dispatched
    for position, arrived in enumerate(arrivals):
        if now - arrived < budget:
            return position
    return 0


@dataclass(frozen=True)
class LineSettings:
    """Bounds and order of one pool's line."""

    max_waiting: int = 100
    timeout_s: float = 120.0
    slo_s: float | None = None
    max_wait_s: float = 1.0
    next_try_s: float = 0.0
    """After a request got a member, the next one tries this much later (not at once)."""


@dataclass(eq=False)
class Ticket:
    """One held request's place in a line."""

    arrived: float
    turn: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Line:
    tickets: list[Ticket] = field(default_factory=list)
    trying: Ticket | None = None
    stalled: bool = False
    """The last try found every member busy: wait for a freed slot or the next poll."""
    not_before: float = 0.0
    """No try starts before this (clock time): the gap after the last request got a member."""
    timed: bool = False
    """A pump is scheduled for ``not_before``."""


class AdmissionLines:
    """Per-pool lines of requests the scheduler answered ``busy`` for (all members full).

    One request at a time tries again: the next one in the line's order, whenever
    capacity may have been freed (an outcome of that pool, seen on the bus) or every
    ``poll_s``. A request that gets a member leaves and lets the next one try after
    ``next_try_s``: its selection then has reached every scheduler replica, so a replica
    other than the one that decided does not see the slot it took as free.
    """

    def __init__(self, settings: Callable[[tuple[str, str]], LineSettings], *,
                 poll_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.clock = clock
        self._lines: dict[tuple[str, str], _Line] = {}

    @property
    def busy(self) -> bool:
        """Some request waits in some line."""
        return bool(self._lines)

    def waiting(self, pool: tuple[str, str]) -> int:
        line = self._lines.get(pool)
        return len(line.tickets) if line else 0

    @contextlib.contextmanager
    def enter(self, pool: tuple[str, str]) -> Iterator[Ticket]:
        """Join the pool's line; GatewayError 429 when it is full."""
        settings = self.settings(pool)
        line = self._lines.setdefault(pool, _Line())
        if len(line.tickets) >= settings.max_waiting:
            raise GatewayError(429, f"every instance is busy and {len(line.tickets)} requests "
                               "already wait; retry later", code="queue_full", retry_after=2)
        ticket = Ticket(self.clock())
        line.tickets.append(ticket)
        try:
            yield ticket
        finally:
            line.tickets.remove(ticket)
            if line.trying is ticket:
                line.trying = None
                line.stalled = False  # it got a member: there may be room for the next
                line.not_before = self.clock() + settings.next_try_s
            if not line.tickets:
                self._lines.pop(pool, None)
            else:
                self._pump(pool, line)

    async def wait_turn(self, pool: tuple[str, str], ticket: Ticket) -> None:
        """Until it is ``ticket``'s turn to ask the scheduler again (GatewayError on timeout)."""
        settings = self.settings(pool)
        line = self._lines[pool]
        if line.trying is ticket:
            line.trying, line.stalled = None, True  # busy again: wait for a freed slot
        deadline = ticket.arrived + settings.timeout_s
        while True:
            self._pump(pool, line)
            left = deadline - self.clock()
            if left <= 0:
                raise GatewayError(503, f"every instance stayed busy for {settings.timeout_s:g}s;"
                                   " retry later", code="overloaded", retry_after=2)
            try:
                await asyncio.wait_for(ticket.turn.wait(), min(self.poll_s, left))
            except TimeoutError:
                line.stalled = False  # a slot may have freed unseen (an expiry): try again
                continue
            ticket.turn.clear()
            return

    def freed(self, pool: tuple[str, str]) -> None:
        """A request of ``pool`` ended somewhere: the next in line may try now."""
        line = self._lines.get(pool)
        if line is not None:
            line.stalled = False
            self._pump(pool, line)

    def _pump(self, pool: tuple[str, str], line: _Line) -> None:
        if line.trying is not None or line.stalled or not line.tickets:
            return
        now = self.clock()
        if now < line.not_before:
            if not line.timed:
                line.timed = True
                asyncio.get_running_loop().call_later(line.not_before - now, self._timed_pump,
                                                      pool, line)
            return
        settings = self.settings(pool)
        position = next_to_serve([t.arrived for t in line.tickets], now,
                                 slo_s=settings.slo_s, max_wait_s=settings.max_wait_s)
        line.trying = line.tickets[position]
        line.trying.turn.set()

    def _timed_pump(self, pool: tuple[str, str], line: _Line) -> None:
        line.timed = False
        if self._lines.get(pool) is line:
            self._pump(pool, line)
