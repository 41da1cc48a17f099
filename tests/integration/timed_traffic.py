"""Client-side load for fault tests that also keeps when each request started and how long
it took, so a test can say which answers are allowed in which window and that none hung."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from tests.integration.load_helpers import stop_clients

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: when it started (monotonic), how long it took, what came back."""

    at: float
    took: float
    status: int
    """0: no HTTP answer (connection error, client time-out)."""
    text: str
    retry_after: str | None

    @property
    def code(self) -> str:
        """The error body's ``code`` (``""`` when there is none)."""
        marker = '"code":"'
        start = self.text.find(marker)
        if start < 0:
            return ""
        start += len(marker)
        return self.text[start:self.text.find('"', start)]


@dataclass
class TimedTraffic:
    """``concurrency`` clients calling ``send`` back to back until stopped."""

    send: Send
    concurrency: int = 4
    timeout_s: float = 30.0
    answers: list[Answer] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _http: httpx.AsyncClient | None = None

    def start(self) -> TimedTraffic:
        """One connection per client (a shared pool: cheap even for hundreds of clients)."""
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        self._http = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
        for _ in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._client(self._http)))
        return self

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = await self.send(http)
                answer = Answer(started, time.monotonic() - started, r.status_code,
                                r.text[:300], r.headers.get("retry-after"))
            except httpx.HTTPError as err:
                answer = Answer(started, time.monotonic() - started, 0,
                                f"{type(err).__name__}: {err}", None)
            self.answers.append(answer)
            await asyncio.sleep(0)

    async def stop(self) -> None:
        await stop_clients(self._stop, self._tasks, self.timeout_s + 30)
        if self._http is not None:
            await self._http.aclose()

    def count(self, good: Callable[[Answer], bool], since: float = 0.0) -> int:
        return sum(1 for a in self.answers if a.at >= since and good(a))

    def summary(self) -> Counter[str]:
        """Answers by kind, for a failing test's message."""
        return Counter(f"{a.status}:{a.code or (a.text if len(a.text) <= 60 else '...')}"
                       for a in self.answers)


def select_sender(api: str, body: dict[str, object]) -> Send:
    async def send(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{api}/scheduler/select", json=body)
    return send


def chat_sender(api: str, model: str, max_tokens: int = 4) -> Send:
    body = {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}]}

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{api}/v1/chat/completions", json=body)
    return send
