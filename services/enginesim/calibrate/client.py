"""Drive an OpenAI-compatible engine: timed streaming requests, closed and open loops, scrapes."""

# Prompts are token-id lists, so a request has exactly the intended length on any tokenizer
# (vLLM, SGLang and the simulator all accept them), and `ignore_eos` makes every request
# produce exactly `max_tokens`. Each chunk's token count comes from continuous usage stats
# where the engine sends them (a slow reader gets several tokens in one chunk).

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from services.enginesim.calibrate.promscrape import EngineGauges, parse_gauges

VOCAB_LOW = 1000
VOCAB_HIGH = 29000
_decode = msgspec.json.Decoder().decode


@dataclass
class Timed:
    """One streamed request, times in seconds from the run's origin."""

    sent: float
    prompt_tokens: int
    max_tokens: int
    first_token: float | None = None
    done: float | None = None
    token_times: list[float] = field(default_factory=list)
    """Arrival time of every output token (tokens of one chunk share its time)."""
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        """Time to the first output token."""
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def output_tokens(self) -> int:
        """Tokens received."""
        return len(self.token_times)

    def gaps(self) -> list[float]:
        """Per-token gaps: a chunk's gap to the previous one divided over its tokens."""
        out: list[float] = []
        times = self.token_times
        i = 1
        while i < len(times):
            j = i
            while j + 1 < len(times) and times[j + 1] == times[i]:
                j += 1
            count = j - i + 1
            out.extend([(times[i] - times[i - 1]) / count] * count)
            i = j + 1
        return out


def prompt_ids(length: int, seed: int) -> list[int]:
    """``length`` pseudo-random token ids, unique per seed (no prefix-cache hits)."""
    rng = random.Random(seed)
    return [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(length)]


@dataclass(frozen=True)
class EngineInfo:
    """What the engine says about itself."""

    engine: str
    model: str
    max_model_len: int | None
    limits: dict[str, int]


class EngineClient:
    """One engine's OpenAI API and /metrics over a shared aiohttp session."""

    def __init__(self, url: str, session: aiohttp.ClientSession, model: str | None = None,
                 engine: str = "vllm") -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.model = model
        self.engine = engine
        self.origin = time.perf_counter()

    def now(self) -> float:
        """Seconds since this client's origin."""
        return time.perf_counter() - self.origin

    async def info(self) -> EngineInfo:
        """Served model, max_model_len, and the limits /metrics or /get_server_info tell."""
        async with self.session.get(self.url + "/v1/models") as reply:
            reply.raise_for_status()
            models = await reply.json()
        first = models["data"][0]
        self.model = self.model or str(first["id"])
        limits: dict[str, int] = {}
        max_len = first.get("max_model_len")
        if isinstance(max_len, int):
            limits["max_model_len"] = max_len
        if first.get("owned_by") == "sglang":
            self.engine = "sglang"
            async with self.session.get(self.url + "/get_server_info") as reply:
                if reply.status == 200:
                    data = await reply.json()
                    for ours, theirs in (("max_num_seqs", "max_running_requests"),
                                         ("max_num_batched_tokens", "chunked_prefill_size"),
                                         ("block_size", "page_size")):
                        if isinstance(data.get(theirs), int) and data[theirs] > 0:
                            limits[ours] = data[theirs]
        else:
            gauges = await self.gauges()
            limits.update(gauges.cache_config)
        return EngineInfo(self.engine, self.model, limits.get("max_model_len"), limits)

    async def gauges(self) -> EngineGauges:
        """One /metrics scrape."""
        async with self.session.get(self.url + "/metrics") as reply:
            reply.raise_for_status()
            return parse_gauges(await reply.text(), self.now())

    async def stream(self, prompt: list[int], max_tokens: int,
                     into: list[Timed] | None = None) -> Timed:
        """One streamed completion of exactly ``max_tokens`` tokens, timed (appended to
        ``into`` at once, so a cancelled request is still seen)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                "stream": True, "ignore_eos": True, "temperature": 0.0,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        timed = Timed(self.now(), len(prompt), max_tokens)
        if into is not None:
            into.append(timed)
        try:
            async with self.session.post(self.url + "/v1/completions", json=body) as reply:
                if reply.status != 200:
                    timed.error = f"HTTP {reply.status}: {(await reply.text())[:200]}"
                    return timed
                await self._read(reply, timed)
        except (aiohttp.ClientError, TimeoutError) as err:
            timed.error = f"{type(err).__name__}: {err}"
        timed.done = self.now()
        return timed

    async def _read(self, reply: aiohttp.ClientResponse, timed: Timed) -> None:
        counted = 0
        async for raw in reply.content:
            if not raw.startswith(b"data: {"):
                continue
            t = self.now()
            chunk: Any = _decode(raw[6:])
            choices = chunk.get("choices") or []
            usage = chunk.get("usage")
            if not choices:
                continue
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                new = usage["completion_tokens"] - counted
            else:
                choice = choices[0]
                new = 1 if choice.get("text") or choice.get("finish_reason") is None else 0
            if new > 0:
                if timed.first_token is None:
                    timed.first_token = t
                timed.token_times.extend([t] * new)
                counted += new
            reason = choices[0].get("finish_reason")
            if reason is not None:
                timed.finish_reason = str(reason)


async def closed_loop(client: EngineClient, concurrency: int,
                      make: Callable[[int], tuple[list[int], int]], *, count: int | None = None,
                      until: float | None = None) -> list[Timed]:
    """Requests ``concurrency`` at a time, each sent as one finishes: ``count`` in all, or
    until the client's clock passes ``until``."""
    results: list[Timed] = []
    next_index = 0

    def more() -> bool:
        if count is not None and next_index >= count:
            return False
        return until is None or client.now() < until

    async def worker() -> None:
        nonlocal next_index
        while more():
            index = next_index
            next_index += 1
            prompt, out = make(index)
            results.append(await client.stream(prompt, out))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@dataclass(frozen=True)
class Arrival:
    """One open-loop request: when, prompt and output lengths, and the prompt's seed."""

    at_s: float
    prompt_tokens: int
    output_tokens: int
    seed: int


@dataclass
class OpenLoopRun:
    """What one open-loop level saw: each request and the engine's gauges over time."""

    results: list[Timed]
    samples: list[EngineGauges]
    start: float
    duration: float
    censored: int = 0
    """Requests still unanswered when the drain time ran out (cancelled)."""


async def scrape(client: EngineClient, interval: float, stop: asyncio.Event,
                 into: list[EngineGauges]) -> None:
    """Scrape /metrics every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            into.append(await client.gauges())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def open_loop(client: EngineClient, arrivals: Sequence[Arrival], duration: float,
                    scrape_interval: float = 0.5, drain_s: float | None = None) -> OpenLoopRun:
    """Send each request at its time (not waiting for answers); scrape throughout.

    With ``drain_s``, requests still unanswered that long after the last arrival are
    cancelled (the engine aborts them); one without a first token then counts with the
    time it waited as its TTFT, a lower bound (see ``censored``).
    """
    samples: list[EngineGauges] = []
    stop = asyncio.Event()
    scraper = asyncio.ensure_future(scrape(client, scrape_interval, stop, samples))
    start = client.now()
    tasks: list[asyncio.Future[Timed]] = []
    timed: list[Timed] = []
    for item in arrivals:
        delay = start + item.at_s - client.now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(
            client.stream(prompt_ids(item.prompt_tokens, item.seed), item.output_tokens,
                          into=timed)))
    remaining = None if drain_s is None else max(0.0, start + duration + drain_s - client.now())
    _, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    now = client.now()
    for t in timed:
        if t.done is None:
            t.error = t.error or "cancelled: still unanswered when the drain time ran out"
            t.done = now
    stop.set()
    await scraper
    results = sorted(timed, key=lambda t: t.sent)
    return OpenLoopRun(results, samples, start, duration, censored=len(pending))


def session(timeout_s: float = 600.0, connections: int = 8192) -> aiohttp.ClientSession:
    """An aiohttp session sized for open-loop bursts: an open loop past saturation keeps
    hundreds of requests in flight, and a pool limit would queue them in the client, where
    the engine cannot count them as waiting."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=connections, force_close=False))
