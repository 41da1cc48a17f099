"""Replay a virtual-time trace against real HTTP engines (the other half of the fidelity check)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from services.enginesim.virtual import TraceRequest


def prompt_for(index: int, item: TraceRequest, default_prefix: int = 512) -> str:
    """A completion prompt of exactly ``item.input_tokens`` tokens, sharing its group's prefix."""
    # The BOS token plus the group's words form the shared prefix, so the prefix cache
    # sees the same sharing as virtual time's synthetic block hashes.
    words = max(1, item.input_tokens - 2)
    shared = 0
    if item.prefix_group is not None:
        prefix = item.prefix_tokens if item.prefix_tokens is not None else default_prefix
        shared = max(0, min(prefix - 1, words))
    head = [f"g{item.prefix_group}w{j}" for j in range(shared)]
    tail = [f"r{index}w{j}" for j in range(words - shared)]
    return " ".join(head + tail)


@dataclass(frozen=True)
class ReplayResult:
    """Client-side timing of one replayed request."""

    index: int
    engine: int
    ttft: float
    e2e: float
    output_tokens: int


async def _send(http: httpx.AsyncClient, url: str, model: str, index: int, engine: int,
                item: TraceRequest, default_prefix: int) -> ReplayResult:
    body = {"model": model, "prompt": prompt_for(index, item, default_prefix),
            "max_tokens": item.output_tokens, "stream": True}
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", url + "/v1/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                if ttft is None:
                    ttft = time.perf_counter() - start
                tokens += 1
    end = time.perf_counter() - start
    return ReplayResult(index, engine, end if ttft is None else ttft, end, tokens)


async def replay(trace: Sequence[TraceRequest], urls: Sequence[str], *, model: str,
                 default_prefix: int = 512) -> list[ReplayResult]:
    """Send each request at its arrival time, round-robin over ``urls``, streaming."""
    limits = httpx.Limits(max_connections=len(trace) + 1, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        origin = time.perf_counter()
        tasks = []
        for index, item in enumerate(trace):
            delay = item.arrival_s - (time.perf_counter() - origin)
            if delay > 0:
                await asyncio.sleep(delay)
            engine = index % len(urls)
            tasks.append(asyncio.ensure_future(
                _send(http, urls[engine], model, index, engine, item, default_prefix)))
        return list(await asyncio.gather(*tasks))
