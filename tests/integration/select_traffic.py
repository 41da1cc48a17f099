"""Client-side select load for fault tests: N loops of POST /scheduler/select, every result kept."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration.load_helpers import stop_clients


@dataclass
class SelectTraffic:
    """``concurrency`` clients sending the same select body back to back until stopped.

    A result is ``(status, answer or error text)``; a 200 whose answer is not one of
    ``answers`` counts as a failure too (a select that "worked" but said nothing useful).
    """

    api: str
    body: dict[str, Any]
    concurrency: int = 4
    answers: frozenset[str] = frozenset()
    timeout_s: float = 30.0
    results: list[tuple[int, str]] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    """``time.monotonic()`` of each failure, in order (to place it against a fault's phases)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> SelectTraffic:
        for _ in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._client()))
        return self

    async def _client(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                try:
                    r = await http.post(f"{self.api}/scheduler/select", json=self.body)
                    self._add(r.status_code, r.text[:300])
                except httpx.HTTPError as err:
                    self._add(0, f"{type(err).__name__}: {err}")
                await asyncio.sleep(0)

    def _add(self, status: int, text: str) -> None:
        self.results.append((status, text))
        if not self._good(status, text):
            self.failed_at.append(time.monotonic())

    async def stop(self) -> None:
        await stop_clients(self._stop, self._tasks)

    @property
    def ok(self) -> int:
        return sum(1 for status, text in self.results if self._good(status, text))

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if not self._good(*r)]

    def _good(self, status: int, text: str) -> bool:
        return status == 200 and (not self.answers or text in self.answers)

    def summary(self) -> Counter[str]:
        """Answers and failures by kind, for a failing test's message."""
        return Counter(f"{status}:{text[:80]}" for status, text in self.results)
