"""The routers of the real-time benchmark: how one trace request reaches an engine.

- client-side (round-robin, random, least-in-flight, power-of-two): the virtual-time
  routers of ``routers.py``, straight to the engines;
- F5 select path: ``POST /scheduler/select`` on the API, then the request to the member
  it answers (``none``/``fallback``/an error: the client's own round-robin, as the iRule
  falls back to the pool's load balancing; ``busy``: 503, as the iRule answers);
- llmsched's OpenAI gateway, and vllm-router: one URL that routes for us.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp

from bench.routing.harness import Router
from bench.routing.realclient import CHAT_PATH, Sent, stream_chat
from bench.routing.realstack import PARTITION, select_body
from bench.routing.routers import RoundRobin
from services.enginesim.virtual import TraceRequest

OutcomeAt = Literal["headers", "first-token"]


@dataclass(slots=True)
class Routed:
    """One trace request: where it went and how the HTTP request went."""

    sent: Sent
    engine: int = -1
    """Engine index, -1 when the router does not say (gateway, vllm-router)."""
    select_s: float = 0.0
    """Time spent asking the scheduler (select paths), included in TTFT and e2e."""
    answer: str = ""
    """What select answered (a member key, busy, none, fallback, HTTP <status>)."""


class RealRouter(Protocol):
    """Sends one trace request somewhere and reports how it went."""

    name: str
    model: str
    """The model name the request bodies carry."""

    async def send(self, session: aiohttp.ClientSession, index: int, item: TraceRequest,
                   body: bytes, timeout_s: float) -> Routed: ...


@dataclass
class ClientSide:
    """A textbook router in the client, straight to the engines."""

    router: Router
    urls: Sequence[str]
    model: str
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.router.name

    async def send(self, session: aiohttp.ClientSession, index: int, item: TraceRequest,
                   body: bytes, timeout_s: float) -> Routed:
        loop = asyncio.get_running_loop()
        engine = self.router.route(index, item, loop.time())
        sent = await stream_chat(session, self.urls[engine] + CHAT_PATH, body,
                                 timeout_s=timeout_s)
        self.router.done(index, engine, sent.ttft, sent.e2e, loop.time())
        return Routed(sent, engine)


@dataclass
class SelectPath:
    """The F5 iRule's path: select on the API, then straight to the answered member."""

    name: str
    api_urls: Sequence[str]
    pool: str
    keys: Sequence[str]
    urls: Sequence[str]
    model: str
    report: OutcomeAt | None = None
    """Report each request's outcome (``POST /scheduler/outcome``) at its response headers
    (as the iRule's HTTP_RESPONSE does: no headers, no report) or at its first token (or
    its failure); None: no reports."""
    fallback: RoundRobin = field(init=False)
    answers: dict[str, int] = field(default_factory=dict)
    outcome_errors: int = 0
    _apis: itertools.cycle[str] = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.fallback = RoundRobin(len(self.urls))
        self._apis = itertools.cycle(self.api_urls)
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._body = select_body(self.pool, self.keys)

    async def send(self, session: aiohttp.ClientSession, index: int, item: TraceRequest,
                   body: bytes, timeout_s: float) -> Routed:
        api = next(self._apis)
        started = time.perf_counter()
        answer = await self._select(session, api)
        select_s = time.perf_counter() - started
        self.answers[answer] = self.answers.get(answer, 0) + 1
        engine = self._index.get(answer)
        if answer == "busy":
            return Routed(Sent(status=503, error="select answered busy"), -1, select_s, answer)
        if engine is None:
            engine = self.fallback.route(index, item, 0.0)
        key = self.keys[engine]
        reported = False

        def report(sent: Sent) -> None:
            nonlocal reported
            if not reported:
                reported = True
                self._outcome(session, api, key, sent)

        sent = await stream_chat(session, self.urls[engine] + CHAT_PATH, body,
                                 timeout_s=timeout_s,
                                 on_headers=report if self.report == "headers" else None,
                                 on_first=report if self.report == "first-token" else None)
        if self.report == "first-token":
            report(sent)  # no first token came: report how it failed
        sent.ttft += select_s
        sent.e2e += select_s
        return Routed(sent, engine, select_s, answer)

    async def _select(self, session: aiohttp.ClientSession, api: str) -> str:
        try:
            async with session.post(api + "/scheduler/select", data=self._body,
                                    headers={"content-type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                text = (await resp.read()).decode(errors="replace").strip()
                return text if resp.status == 200 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return type(err).__name__

    def _outcome(self, session: aiohttp.ClientSession, api: str, key: str, sent: Sent) -> None:
        """Fire and forget, as the iRule would (it never waits for the answer)."""
        report: dict[str, object] = {"pool_name": self.pool, "partition": PARTITION,
                                     "member": key, "status": sent.status}
        took = sent.headers_s if self.report == "headers" else sent.ttft
        if self.report == "first-token":  # a real TTFT: the predictor may learn from it
            report["ttft_at"] = "first_token"
        if took != float("inf"):
            report["ttft_ms"] = round(took * 1000, 3)
        task = asyncio.create_task(self._post(session, api, json.dumps(report).encode()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, session: aiohttp.ClientSession, api: str, body: bytes) -> None:
        try:
            async with session.post(api + "/scheduler/outcome", data=body,
                                    headers={"content-type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=5.0)) as resp:
                await resp.read()
                if resp.status >= 300:
                    self.outcome_errors += 1
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.outcome_errors += 1


@dataclass
class OneUrl:
    """A router behind one or more URLs (llmsched's gateway, vllm-router), taken in turn."""

    name: str
    urls: Sequence[str]
    model: str
    _next: itertools.cycle[str] = field(init=False)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.urls)

    async def send(self, session: aiohttp.ClientSession, index: int, item: TraceRequest,
                   body: bytes, timeout_s: float) -> Routed:
        sent = await stream_chat(session, next(self._next) + CHAT_PATH, body,
                                 timeout_s=timeout_s)
        return Routed(sent)
