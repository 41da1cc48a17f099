"""Client-side load for gateway tests: keep N requests in flight and record every result."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx


async def stop_clients(stop: asyncio.Event, tasks: list[asyncio.Task[None]],
                       timeout_s: float = 60.0) -> None:
    """Tell client loops to stop, wait for them (cancelling stragglers), swallow their ends."""
    stop.set()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    for task in done:
        with contextlib.suppress(Exception):
            task.result()


@dataclass
class Traffic:
    """``concurrency`` clients each sending chat requests back to back until stopped."""

    url: str
    model: str
    concurrency: int
    max_tokens: int = 4
    stream: bool = False
    results: list[tuple[int, str]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Traffic:
        for _ in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._client()))
        return self

    async def _client(self) -> None:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": [{"role": "user", "content": "hello"}],
                                "stream": self.stream}
        async with httpx.AsyncClient(timeout=120) as http:
            while not self._stop.is_set():
                try:
                    r = await http.post(f"{self.url}/v1/chat/completions", json=body)
                    text = r.text
                    if self.stream and r.status_code == 200 and "[DONE]" not in text:
                        self.results.append((599, f"stream cut: {text[-200:]}"))
                        continue
                    self.results.append((r.status_code, "" if r.status_code == 200
                                         else text[:300]))
                except httpx.HTTPError as err:
                    self.results.append((0, f"{type(err).__name__}: {err}"))

    async def stop(self) -> None:
        await stop_clients(self._stop, self._tasks)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r[0] == 200)
