"""Coarse timeouts for the gateway's requests: one timer per tick, not one per request.

Every request through the gateway used to arm and cancel three event-loop timers (the
body's idle timeout, the disconnect watch's delay, the engine's first-byte timeout), and on
uvloop each is a libuv timer made and stopped: together about 3 µs of the 90 µs of CPU a
request costs the API process. These deadlines are seconds long and a tenth of a second
late is harmless, so they sit in a dict that one timer checks every ``tick_s`` while any is
set. A callback runs between ``at`` and ``at + tick_s`` (later on a loop that is late).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable

log = logging.getLogger("llmsched.api.gateway")

TICK_S = 0.1


class Deadlines:
    """Callbacks due at loop times, checked once per tick; each key holds one deadline."""

    __slots__ = ("_due", "_loop", "_tick", "tick_s")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._due: dict[Hashable, tuple[float, Callable[[], object]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.TimerHandle | None = None

    def set(self, key: Hashable, at: float, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the loop's clock passes ``at``, unless ``key`` is cleared
        before (setting a key again replaces its deadline)."""
        self._due[key] = (at, callback)
        if self._tick is None:
            loop = self._loop = asyncio.get_running_loop()
            self._tick = loop.call_later(self.tick_s, self._check)

    def clear(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def __len__(self) -> int:
        return len(self._due)

    def _check(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        due = [key for key, (at, _) in self._due.items() if at <= now]
        for key in due:
            entry = self._due.pop(key, None)
            if entry is None:  # an earlier callback cleared it
                continue
            try:
                entry[1]()
            except Exception:  # one broken callback must not stop the others' deadlines
                log.exception("Deadline callback for %r failed", key)
        self._tick = self._loop.call_later(self.tick_s, self._check) if self._due else None
