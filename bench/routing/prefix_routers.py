"""Routers of the shared-prefix benchmark (virtual time).

``PrefixCoreRouter`` runs the scheduler's own code (the ``cache_aware`` profile) fed as the
services feed it: the gateway's route fields (character blocks of the rendered prompt, or
the engine tokenizer's KV blocks), the engines' KV events through the collector's mirror,
and — with ``replicas=2`` — two scheduler cores that see each other's selection events.
``CacheAwareEmulation`` is the vllm-router/sglang-router ``cache_aware`` policy written out
from their documentation and source, for virtual time (the real binaries run in real time).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence

from bench.routing.harness import Snapshot
from bench.routing.prefix_workload import PrefixRequest
from bench.routing.routers import PARTITION, POOL, CoreRouter
from services.collector.kv_mirror import Changes, MemberMirror
from shared.config import ModeConfig
from shared.prefix import render_chat, text_block_hashes, token_block_keys
from shared.prefix_events import EventBatch, KVEvent, KvUpdate
from shared.routing import OutcomeEvent, RouteRequest, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.scheduling.prefix_memory import PrefixMemory


class PrefixCoreRouter(CoreRouter):
    """The scheduler core with a cache-aware (or any) mode; one or two replicas."""

    def __init__(self, name: str, mode: ModeConfig, engines: int, *, scrape_interval: float,
                 seed: int = 0, block_size: int = 16, replicas: int = 1,
                 session_routing: bool = False) -> None:
        super().__init__(name, mode, engines, scrape_interval=scrape_interval, seed=seed)
        self.block_size = block_size
        self.session_routing = session_routing
        self.cores: list[SchedulerCore] = [self.core]
        for r in range(1, replicas):
            twin = CoreRouter(name, mode, engines, scrape_interval=scrape_interval,
                              seed=seed + 7919 * r)
            twin.core.replica = f"bench-{r}"
            self.cores.append(twin.core)
        for core in self.cores:
            core.clock = lambda: self.now
        self._turn = 0
        self._fields: dict[int, dict[str, object]] = {}
        self._mirrors = [MemberMirror() for _ in range(engines)]
        self._kv_seq = [0] * engines

    def fields(self, index: int, item: PrefixRequest) -> dict[str, object]:
        """The route call's cache-aware fields, as the gateway computes them."""
        known = self._fields.get(index)
        if known is not None:
            return known
        s = self.mode.cache_aware
        text = render_chat(item.messages)
        out: dict[str, object] = {"prompt_chars": len(text)}
        if self.mode.type == "cache_aware":
            out["prefix_hashes"] = text_block_hashes(text, s.block_chars, s.max_blocks)
            if s.source == "precise":
                budget = math.ceil(s.max_blocks * s.block_chars / s.chars_per_token
                                   / self.block_size)
                out["token_keys"] = token_block_keys(item.token_ids, self.block_size,
                                                     max_blocks=budget)
                out["prompt_tokens"] = len(item.token_ids)
            if self.session_routing:
                out["session"] = item.session
        self._fields[index] = out
        return out

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        core = self.core
        for other in self.cores:
            self.core = other
            super().observe(snapshots, now)
        self.core = core

    def route(self, index: int, item: PrefixRequest, now: float) -> int:  # type: ignore[override]
        self.now = now
        core = self.cores[self._turn % len(self.cores)]
        self._turn += 1
        reply, event = core.route(RouteRequest(
            pool=POOL, partition=PARTITION, request_id=str(index), ttl_s=1e9,
            **self.fields(index, item)))  # type: ignore[arg-type]
        self.answers[reply.reason] = self.answers.get(reply.reason, 0) + 1
        if event is not None:
            self._announce(core, event)
        if not reply.url:
            return -1 if reply.answer == "busy" or reply.active else -2
        return self.keys.index(reply.answer)

    def _announce(self, source: SchedulerCore, event: SelectionEvent) -> None:
        for core in self.cores:
            if core is not source:
                core.apply_selection(event)

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self.now = now
        for core in self.cores:
            core.apply_outcome(OutcomeEvent(
                request_id=str(index), pool=POOL, partition=PARTITION,
                member=self.keys[engine], status=200, ttft_s=ttft, upstream_ttft_s=ttft,
                e2e_s=e2e))

    def kv(self, engine: int, events: list[KVEvent], now: float) -> None:
        """An engine's KV events, through the collector's mirror to every replica's index."""
        mirror = self._mirrors[engine]
        changes = Changes()
        seq = 0 if mirror.last_seq is None else mirror.last_seq + 1
        mirror.apply(seq, seq, EventBatch(ts=now, events=events), changes)
        if changes.empty():
            return
        self._kv_seq[engine] += 1
        update = KvUpdate(pool=POOL, partition=PARTITION, member=self.keys[engine],
                          epoch="bench", seq=self._kv_seq[engine], stored=changes.stored,
                          removed=changes.removed, cleared=changes.cleared,
                          block_size=mirror.block_size, at=now)
        for core in self.cores:
            core.apply_kv(update)


class CacheAwareEmulation:
    """vllm-router / sglang-router ``cache_aware``: the longest text-prefix match wins when it
    covers more than ``cache_threshold`` of the prompt, else the worker with the smallest
    tree; unless the load is imbalanced (max − min > ``balance_abs`` and max > ``balance_rel``
    × min), then the least-loaded worker. Load is the router's own in-flight count. The
    defaults are vllm-router 0.1's (``vllm-router --help``: 0.3, 64, 1.5)."""

    def __init__(self, engines: int, seed: int = 0, *, cache_threshold: float = 0.3,
                 balance_abs: int = 64, balance_rel: float = 1.5, chars: int = 16,
                 name: str = "vllm-router cache_aware (emulated)") -> None:
        self.name = name
        self.engines = engines
        self.rng = random.Random(seed)
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.chars = chars
        self.inflight = [0] * engines
        self.tree = PrefixMemory(max_blocks=1 << 30, ttl_s=math.inf, max_members_per_block=64)
        self.tree_size = [0] * engines

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        return None

    def route(self, index: int, item: PrefixRequest, now: float) -> int:
        text = render_chat(item.messages)
        hashes = text_block_hashes(text, self.chars, 1 << 20)
        hi, lo = max(self.inflight), min(self.inflight)
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            engine = self._least_loaded()
        else:
            matched = self.tree.match(hashes, now)
            best = max(matched.values(), default=0)
            rate = best * self.chars / max(1, len(text))
            if rate > self.cache_threshold:
                engine = int(self.rng.choice([m for m, d in matched.items() if d == best]))
            else:
                small = min(self.tree_size)
                engine = self.rng.choice([i for i, s in enumerate(self.tree_size) if s == small])
        known = self.tree.match(hashes, now, [str(engine)]).get(str(engine), 0)
        self.tree.insert(str(engine), hashes, now)
        self.tree_size[engine] += len(hashes) - known
        self.inflight[engine] += 1
        return engine

    def _least_loaded(self) -> int:
        low = min(self.inflight)
        return self.rng.choice([i for i, n in enumerate(self.inflight) if n == low])

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self.inflight[engine] -= 1


class ConsistentHashEmulation(CacheAwareEmulation):
    """vllm-router ``consistent_hash``: the session (else the prompt) picks a worker."""

    def route(self, index: int, item: PrefixRequest, now: float) -> int:
        engine = zlib.crc32(item.session.encode()) % self.engines
        self.inflight[engine] += 1
        return engine
