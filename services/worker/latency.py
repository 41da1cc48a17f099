"""Per-instance request measurements taken by the worker's proxy: in-flight, TTFT, e2e."""

from __future__ import annotations

import asyncio
from collections import deque

WINDOW = 100


class LatencyStats:
    """In-flight count and the last/mean TTFT and end-to-end latency over a sliding window."""

    def __init__(self, window: int = WINDOW) -> None:
        self.inflight = 0
        self.requests_total = 0
        self.ttft_last: float | None = None
        self.e2e_last: float | None = None
        self._ttft: deque[float] = deque(maxlen=window)
        self._e2e: deque[float] = deque(maxlen=window)
        self.idle = asyncio.Event()
        """Set while nothing is in flight."""
        self.idle.set()

    def begin(self) -> None:
        """A proxied request started."""
        self.inflight += 1
        self.idle.clear()

    def first_byte(self, seconds: float) -> None:
        """The first body byte of a successful answer arrived ``seconds`` after the request."""
        self.ttft_last = seconds
        self._ttft.append(seconds)

    def end(self, seconds: float | None) -> None:
        """A proxied request ended; ``seconds`` is its e2e latency when it succeeded."""
        self.inflight = max(0, self.inflight - 1)
        if self.inflight == 0:
            self.idle.set()
        if seconds is not None:
            self.requests_total += 1
            self.e2e_last = seconds
            self._e2e.append(seconds)

    @property
    def ttft_avg(self) -> float | None:
        """Mean TTFT over the window."""
        return sum(self._ttft) / len(self._ttft) if self._ttft else None

    @property
    def e2e_avg(self) -> float | None:
        """Mean end-to-end latency over the window."""
        return sum(self._e2e) / len(self._e2e) if self._e2e else None
