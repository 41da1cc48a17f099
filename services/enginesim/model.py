"""The queueing model of one engine: continuous batching over a paged KV cache (pure, no I/O)."""

# Clock-free on purpose: the real-time runner and the virtual-time loop both call
# begin_step(now) to schedule a step and learn its duration, then finish_step(now)
# once that time has passed, so one model serves both.

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from services.enginesim.config import EngineConfig
from services.enginesim.kvcache import BlockPool
from services.enginesim.stats import EngineStats, sglang_buckets, vllm_buckets


class SimRequest:
    """One request's state inside the engine."""

    __slots__ = (
        "arrival", "blocks", "cached_tokens", "external_tokens", "finish_reason", "finished_at",
        "first_scheduled", "first_token", "hashes", "last_token", "max_tokens", "n",
        "num_computed", "num_output", "num_preemptions", "num_registered", "prompt_len",
        "ready_at", "remote_decode", "rid", "sink", "stop_reason", "target", "transfer_blocks",
    )

    def __init__(self, rid: str, prompt_len: int, hashes: Sequence[int], *, max_tokens: int,
                 target: int | None = None, arrival: float = 0.0, external_tokens: int = 0,
                 remote_decode: bool = False, n: int = 1, sink: Any = None) -> None:
        self.rid = rid
        self.prompt_len = prompt_len
        self.hashes = hashes
        self.max_tokens = max_tokens
        self.target = max(1, min(max_tokens, max_tokens if target is None else target))
        self.stop_reason = "length" if self.target >= max_tokens else "stop"
        self.arrival = arrival
        self.external_tokens = external_tokens
        self.remote_decode = remote_decode
        self.n = n
        self.sink = sink
        self.num_computed = 0
        self.num_output = 0
        self.num_registered = 0
        self.num_preemptions = 0
        self.cached_tokens = 0
        self.blocks: list[int] = []
        self.transfer_blocks: list[int] = []
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token = 0.0
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.ready_at: float | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus tokens generated so far."""
        return self.prompt_len + self.num_output


class EngineModel:
    """vLLM-style scheduler: FCFS waiting queue, running batch, preemption by recompute."""

    def __init__(self, config: EngineConfig, stats: EngineStats | None = None) -> None:
        self.config = config.validate()
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        buckets = sglang_buckets if config.engine == "sglang" else vllm_buckets
        self.stats = stats or EngineStats(buckets(config.max_model_len))
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.deferred: list[SimRequest] = []
        self.sleep_level = 0
        self._asleep_parts: set[str] = set()
        self._rng = random.Random(config.seed)
        self._scheduled: list[tuple[SimRequest, int]] = []
        self._step_start = 0.0
        self._last_step_end: float | None = None
        self.steps = 0
        self.busy_time = 0.0
        t = config.timing
        scale = 0.001 / config.speed
        self._base = t.step_base_ms * scale
        self._per_prefill = t.prefill_ms_per_token * scale
        self._per_seq = t.decode_ms_per_seq * scale
        self._per_ctx = t.attn_ms_per_ctx_token * scale
        self._per_transfer = t.kv_transfer_ms_per_token * scale
        self._jitter = t.jitter

    # -- gauges ---------------------------------------------------------------
    @property
    def num_running(self) -> int:
        """Requests in the batch."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Requests queued, including those waiting on a KV transfer."""
        return len(self.waiting) + len(self.deferred)

    @property
    def num_deferred(self) -> int:
        """Requests waiting on a remote KV transfer."""
        return len(self.deferred)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use."""
        return self.pool.usage

    @property
    def is_sleeping(self) -> bool:
        """True between sleep and a full wake-up."""
        return self.sleep_level > 0

    @property
    def in_step(self) -> bool:
        """True between begin_step and finish_step."""
        return bool(self._scheduled)

    # -- requests -------------------------------------------------------------
    def add(self, req: SimRequest, now: float) -> None:
        """Queue a request (it is considered at the next step)."""
        req.arrival = now
        if req.external_tokens > 0 and not self.is_sleeping:
            self._start_transfer(req, now)
        else:
            req.external_tokens = 0
            self.waiting.append(req)

    def _start_transfer(self, req: SimRequest, now: float) -> None:
        bs = self.config.block_size
        need = -(-req.external_tokens // bs)
        if need > self.pool.num_free:
            req.external_tokens = 0
            self.waiting.append(req)
            return
        req.blocks = self.pool.allocate(need)
        req.num_computed = req.external_tokens
        req.ready_at = now + req.external_tokens * self._per_transfer
        self.deferred.append(req)

    def next_wakeup(self) -> float | None:
        """When a deferred request becomes ready, if any is pending."""
        if self.is_sleeping or not self.deferred:
            return None
        return min(r.ready_at or 0.0 for r in self.deferred)

    def has_work(self) -> bool:
        """Whether a step can be scheduled now."""
        return not self.is_sleeping and bool(self.running or self.waiting)

    def abort(self, req: SimRequest, now: float) -> bool:
        """Remove a request wherever it is; False when it had already finished."""
        if req.finish_reason is not None:
            return False
        if req in self.running:
            self.running.remove(req)
        elif req in self.deferred:
            self.deferred.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                return False
        self._finish(req, "abort", now)
        return True

    # -- stepping -------------------------------------------------------------
    def begin_step(self, now: float) -> float | None:
        """Schedule one step; returns its duration, or None when there is nothing to run."""
        if self.is_sleeping:
            return None
        if self.deferred:
            self._promote_ready(now)
        if not self.running and not self.waiting:
            return None
        cfg = self.config
        bs = cfg.block_size
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        scheduled = self._scheduled
        running = self.running
        preempted = False
        prefill_tokens = 0
        decodes = 0
        ctx = 0
        i = 0
        n_running = len(running)
        while i < n_running and budget > 0:
            req = running[i]
            computed = req.num_computed
            n = req.prompt_len + req.num_output - computed
            if n > budget:
                n = budget
            end = computed + n
            blocks = req.blocks
            if end > len(blocks) * bs:
                need = (end + bs - 1) // bs - len(blocks)
                while need > pool.num_free and running[-1] is not req:
                    self._preempt(running.pop())
                    preempted = True
                n_running = len(running)
                if need > pool.num_free:
                    self._preempt(running.pop())
                    preempted = True
                    break
                blocks.extend(pool.allocate(need))
            scheduled.append((req, n))
            budget -= n
            if n == 1 and req.num_output:
                decodes += 1
            else:
                prefill_tokens += n
            ctx += end
            i += 1
        if not preempted:
            waiting = self.waiting
            max_seqs = cfg.max_num_seqs
            while waiting and len(running) < max_seqs and budget > 0:
                req = waiting[0]
                hits: list[int] = []
                if not req.blocks:
                    hits = pool.match_prefix(req.hashes, (req.total_tokens - 1) // bs)
                start = len(hits) * bs if hits else req.num_computed
                n = min(req.total_tokens - start, budget)
                need = (start + n + bs - 1) // bs - len(req.blocks) - len(hits)
                if need > pool.free_after_taking(hits):
                    break
                waiting.popleft()
                hit_tokens = len(hits) * bs
                if hits:
                    pool.take(hits)
                    req.blocks = hits
                    req.num_registered = len(hits)
                    req.num_computed = start
                if need > 0:
                    req.blocks.extend(pool.allocate(need))
                if req.first_scheduled is None:
                    self._first_admission(req, now, hit_tokens)
                running.append(req)
                scheduled.append((req, n))
                budget -= n
                prefill_tokens += n
                ctx += start + n
        if not scheduled:
            return None
        self.stats.iteration_tokens.observe(float(prefill_tokens + decodes))
        duration = (self._base + self._per_prefill * prefill_tokens + self._per_seq * decodes
                    + self._per_ctx * ctx)
        if self._jitter:
            duration *= max(0.5, 1.0 + self._jitter * self._rng.gauss(0.0, 1.0))
        self._step_start = now
        self.steps += 1
        self.busy_time += duration
        return duration

    def _first_admission(self, req: SimRequest, now: float, hit_tokens: int) -> None:
        stats = self.stats
        req.first_scheduled = max(now, req.arrival)
        req.cached_tokens = hit_tokens
        if req.external_tokens:
            stats.external_queries += req.prompt_len
            stats.external_hits += req.external_tokens
        else:
            stats.prefix_queries += req.prompt_len
            stats.prefix_hits += hit_tokens

    def _promote_ready(self, now: float) -> None:
        ready = [r for r in self.deferred if (r.ready_at or 0.0) <= now]
        if ready:
            self.deferred = [r for r in self.deferred if (r.ready_at or 0.0) > now]
            self.waiting.extendleft(reversed(ready))

    def _requeue(self, req: SimRequest) -> None:
        self.pool.release(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_registered = 0
        req.external_tokens = 0
        self.waiting.appendleft(req)

    def _preempt(self, req: SimRequest) -> None:
        req.num_preemptions += 1
        self.stats.preemptions += 1
        self._requeue(req)

    def finish_step(self, now: float) -> list[SimRequest]:
        """Apply the scheduled step; returns the requests that got a token (finished ones too)."""
        out: list[SimRequest] = []
        stats = self.stats
        pool = self.pool
        bs = self.config.block_size
        any_finished = False
        itl: dict[float, int] = {}
        for req, n in self._scheduled:
            if req.finish_reason is not None:
                continue
            computed = req.num_computed + n
            req.num_computed = computed
            if req.num_registered < req.prompt_len // bs:
                full = min(computed, req.prompt_len) // bs
                if full > req.num_registered:
                    hashes = req.hashes
                    for idx in range(req.num_registered, min(full, len(hashes))):
                        pool.register(req.blocks[idx], hashes[idx])
                    req.num_registered = full
            if computed < req.prompt_len + req.num_output:
                continue
            req.num_output += 1
            if req.first_token is None:
                self._on_first_token(req, now)
            else:
                gap = now - req.last_token
                itl[gap] = itl.get(gap, 0) + 1
            req.last_token = now
            out.append(req)
            if req.num_output >= req.target:
                any_finished = True
                if req.remote_decode:
                    req.transfer_blocks = req.blocks[:req.prompt_len // bs]
                self._finish(req, req.stop_reason, now)
        stats.generation_tokens += len(out)
        for gap, count in itl.items():
            stats.itl.observe(gap, count)
        self._scheduled = []
        if any_finished:
            self.running = [r for r in self.running if r.finish_reason is None]
        return out

    def _on_first_token(self, req: SimRequest, now: float) -> None:
        stats = self.stats
        req.first_token = now
        stats.ttft.observe(now - req.arrival)
        stats.prompt_tokens += req.prompt_len
        stats.tokens_cache_hit += req.cached_tokens
        stats.tokens_external += req.external_tokens
        stats.tokens_local_compute += req.prompt_len - req.cached_tokens - req.external_tokens
        stats.prefill_computed.observe(float(req.prompt_len - req.cached_tokens))
        stats.prefill.observe(now - (req.first_scheduled or now))

    def _finish(self, req: SimRequest, reason: str, now: float) -> None:
        stats = self.stats
        req.finish_reason = reason
        req.finished_at = now
        if req.blocks:
            self.pool.release(req.blocks)
            req.blocks = []
        stats.finished[reason] += 1
        stats.requests_finished += 1
        stats.e2e.observe(now - req.arrival)
        stats.prompt_len.observe(float(req.prompt_len))
        stats.generation_len.observe(float(req.num_output))
        stats.max_generation.observe(float(req.max_tokens))
        stats.params_max_tokens.observe(float(req.max_tokens))
        stats.params_n.observe(float(req.n))
        stats.num_preemptions.observe(float(req.num_preemptions))
        if req.first_scheduled is not None:
            stats.queue.observe(req.first_scheduled - req.arrival)
            stats.inference.observe(now - req.first_scheduled)
        if req.first_token is not None:
            stats.decode.observe(now - req.first_token)
            if req.num_output > 1:
                stats.tpot.observe((now - req.first_token) / (req.num_output - 1))

    # -- sleep mode -----------------------------------------------------------
    def sleep(self, level: int, now: float) -> list[SimRequest]:
        """Pause the engine; level 2 aborts every unfinished request. Returns the aborted ones."""
        aborted: list[SimRequest] = []
        self._scheduled = []
        for req in reversed(self.deferred):
            self._requeue(req)
        self.deferred = []
        for req in reversed(self.running):
            self._requeue(req)
        self.running = []
        if level >= 2:
            while self.waiting:
                req = self.waiting.popleft()
                self._finish(req, "abort", now)
                aborted.append(req)
        self.pool.reset_cache()
        self.sleep_level = max(self.sleep_level, level)
        self._asleep_parts = {"weights", "kv_cache"}
        return aborted

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Wake all parts, or only the tagged ones; the engine runs once all are awake."""
        if tags:
            self._asleep_parts -= set(tags)
        else:
            self._asleep_parts.clear()
        if not self._asleep_parts:
            self.sleep_level = 0
