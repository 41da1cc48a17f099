"""Messages nats-py drops for a subscription past its pending limits: counted, logged sparingly.

nats-py queues each subscription's messages between its read loop and the subscription's
callback, up to the subscription's pending limits (``pending_msgs_limit``,
``pending_bytes_limit``). A message that finds the queue full is dropped and reported
through the connection's error callback as one ``SlowConsumerError`` — one per message, so
thousands a second when a process reads a backlog faster than it handles it. Here each
drop is counted per subscription (its subject as subscribed, wildcards and all: a bounded
label), the first one is logged at once, and later ones at most once per ``every_s`` per
subscription, as the number dropped since the previous line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.errors import SlowConsumerError

log = logging.getLogger("llmsched.bus")

REPORT_EVERY_S = 10.0
"""At most one line per subscription this often while its messages keep being dropped."""

OnDropped = Callable[[str], None]
"""Called with the subscription's subject for each message dropped (a metric's ``inc``)."""


@dataclass
class _Subscription:
    total: int = 0
    unreported: int = 0
    last_line_at: float | None = None
    timer: asyncio.TimerHandle | None = None


class DroppedMessages:
    """Counts and logs the slow-consumer drops of one NATS connection (``name``)."""

    def __init__(self, name: str, *, on_dropped: OnDropped | None = None,
                 every_s: float = REPORT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.name = name
        self.every_s = every_s
        self._on_dropped = on_dropped
        self._clock = clock
        self._log = logger
        self._subs: dict[str, _Subscription] = {}

    def totals(self) -> dict[str, int]:
        """Messages dropped so far, by subscription subject."""
        return {subject: sub.total for subject, sub in self._subs.items()}

    def dropped(self, err: SlowConsumerError) -> None:
        """One message dropped (nats-py's error callback got ``err``)."""
        subject = err.sub.subject  # as subscribed (wildcards): one label per subscription
        sub = self._subs.setdefault(subject, _Subscription())
        sub.total += 1
        sub.unreported += 1
        if self._on_dropped is not None:
            self._on_dropped(subject)
        now = self._clock()
        if sub.last_line_at is None:
            self._log.warning(
                "NATS slow consumer (%s): messages dropped on %s: this process reads slower "
                "than they arrive; pending limit %s; further drops are counted and logged at "
                "most every %.0f s", self.name, subject, _limits(err), self.every_s)
            sub.unreported = 0
            sub.last_line_at = now
        elif now - sub.last_line_at >= self.every_s:
            self._report(subject, sub, now)
        elif sub.timer is None:  # the drops of a burst still get their line
            wait_s = self.every_s - (now - sub.last_line_at)
            sub.timer = asyncio.get_running_loop().call_later(wait_s, self._due, subject)

    def flush(self) -> None:
        """Log every subscription's drops not reported yet (the timers do it when due)."""
        now = self._clock()
        for subject, sub in self._subs.items():
            if sub.unreported:
                self._report(subject, sub, now)

    def close(self) -> None:
        """Cancel the pending report timers (their drops stay counted, unlogged)."""
        for sub in self._subs.values():
            if sub.timer is not None:
                sub.timer.cancel()
                sub.timer = None

    def _due(self, subject: str) -> None:
        sub = self._subs[subject]
        sub.timer = None
        if sub.unreported:
            self._report(subject, sub, self._clock())

    def _report(self, subject: str, sub: _Subscription, now: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        since = now - sub.last_line_at if sub.last_line_at is not None else 0.0
        self._log.warning("NATS slow consumer (%s): %d more message(s) dropped on %s in the "
                          "last %.0f s (%d in all)", self.name, sub.unreported, subject, since,
                          sub.total)
        sub.unreported = 0
        sub.last_line_at = now


def _limits(err: SlowConsumerError) -> str:
    """The subscription's pending limits; nats-py keeps them in private fields only."""
    msgs = getattr(err.sub, "_pending_msgs_limit", None)
    size = getattr(err.sub, "_pending_bytes_limit", None)
    if msgs is None or size is None:
        return "unknown"
    return f"{msgs} messages / {size} bytes"
