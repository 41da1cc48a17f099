"""The queueing model of one engine: continuous batching over a paged KV cache (pure, no I/O)."""

# Clock-free on purpose: the real-time runner and the virtual-time loop both call
# begin_step(now) to schedule a step and learn its duration, then finish_step(now)
# once that time has passed, so one model serves both.

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from services.enginesim.config import EngineConfig
from services.enginesim.kvcache import BlockPool
from services.enginesim.kvhold import HeldKV
from services.enginesim.noise import StepNoise
from services.enginesim.stats import EngineStats, sglang_buckets, vllm_buckets

SleepMode = Literal["abort", "wait", "keep"]
SLEEP_MODES: tuple[SleepMode, ...] = ("abort", "wait", "keep")
SLEEP_TAGS = frozenset(("weights", "kv_cache"))


class SimRequest:
    """One request's state inside the engine."""

    __slots__ = (
        "arrival", "blocks", "cached_tokens", "external_tokens", "finish_reason", "finished_at",
        "first_scheduled", "first_token", "hashes", "last_token", "max_tokens", "n",
        "num_computed", "num_output", "num_preemptions", "num_registered", "prompt_len",
        "queued_at", "ready_at", "remote_decode", "rid", "sink", "stop_reason", "target",
        "transfer_blocks",
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
        self.queued_at: float | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus tokens generated so far."""
        return self.prompt_len + self.num_output


class EngineModel:
    """vLLM-style scheduler: FCFS waiting queue, running batch, preemption by recompute."""

    def __init__(self, config: EngineConfig, stats: EngineStats | None = None) -> None:
        self.config = config.validate()
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.held = HeldKV(self.pool, config.kv_lease_s)
        """KV of finished prefills kept until their decode pulls it (disaggregated serving)."""
        buckets = sglang_buckets if config.engine == "sglang" else vllm_buckets
        self.stats = stats or EngineStats(buckets(config.max_model_len))
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.deferred: list[SimRequest] = []
        self.arriving: deque[SimRequest] = deque()
        self.paused: Literal["", "new", "all"] = ""
        """Scheduler pause as vLLM's: "new" admits nothing new, "all" schedules nothing."""
        self.sleep_level: int | None = None
        """Level of the last completed sleep call, None when awake (metrics show it)."""
        self._asleep_parts: set[str] = set()
        self._frozen: tuple[int, int] | None = None
        self._scheduled: list[tuple[SimRequest, int]] = []
        self._step_start = 0.0
        self._last_step_end: float | None = None
        self.steps = 0
        self.busy_time = 0.0
        t = config.timing
        scale = 0.001 / config.speed
        self._frontend = t.frontend_ms * scale
        self._base = t.step_base_ms * scale
        self._per_prefill = t.prefill_ms_per_token * scale
        self._per_prefill_ctx = t.prefill_ms_per_token_kctx * scale / 1000
        self._per_seq = t.decode_ms_per_seq * scale
        self._per_ctx = t.attn_ms_per_ctx_token * scale
        self._per_waiting = t.queue_ms_per_waiting * scale
        self._waiting_cap = t.queue_waiting_cap
        self._per_transfer = t.kv_transfer_ms_per_token * scale
        self._noise = StepNoise(t.jitter, t.drift_sd, t.drift_tau_s, config.seed,
                                t.stall_rate_per_s, t.stall_mean_s)

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
    def reported_running(self) -> int:
        """Running as /metrics shows it: frozen while asleep (a paused engine reports nothing)."""
        return self.num_running if self._frozen is None else self._frozen[0]

    @property
    def reported_waiting(self) -> int:
        """Waiting as /metrics shows it: arrivals while asleep are not counted."""
        return self.num_waiting if self._frozen is None else self._frozen[1]

    @property
    def reported_deferred(self) -> int:
        """Deferred as /metrics shows it (0 while asleep)."""
        return self.num_deferred if self._frozen is None else 0

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use."""
        return self.pool.usage

    @property
    def is_sleeping(self) -> bool:
        """True from a sleep call (any level) until a full wake-up."""
        return bool(self.paused)

    @property
    def in_step(self) -> bool:
        """True between begin_step and finish_step."""
        return bool(self._scheduled)

    # -- requests -------------------------------------------------------------
    def add(self, req: SimRequest, now: float, spent: float = 0.0) -> None:
        """Accept a request; the scheduler sees it after the front-end's latency, less the
        ``spent`` seconds a real server already spent on it (its own HTTP path)."""
        req.arrival = now
        delay = self._frontend - spent
        if delay > 0:
            req.ready_at = now + delay
            self.arriving.append(req)
        else:
            self._enqueue(req, now)

    def _enqueue(self, req: SimRequest, now: float) -> None:
        req.ready_at = None
        req.queued_at = now
        if req.external_tokens > 0 and not self.is_sleeping:
            self._start_transfer(req, now)
        else:
            req.external_tokens = 0
            self.waiting.append(req)

    def _promote_arrivals(self, now: float) -> None:
        arriving = self.arriving
        while arriving and (arriving[0].ready_at or 0.0) <= now:
            self._enqueue(arriving.popleft(), now)

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
        """When an arriving or deferred request becomes ready, if any is pending."""
        times = [self.arriving[0].ready_at or 0.0] if self.arriving else []
        if not self.paused and self.deferred:
            times.append(min(r.ready_at or 0.0 for r in self.deferred))
        if self.held:
            times.append(self.held.next_expiry() or 0.0)
        return min(times) if times else None

    def has_work(self) -> bool:
        """Whether a step can be scheduled now."""
        if self.paused == "all":
            return False
        if self.paused == "new":
            return bool(self.running)
        return bool(self.running or self.waiting)

    def abort(self, req: SimRequest, now: float) -> bool:
        """Remove a request wherever it is; False when it had already finished."""
        if req.finish_reason is not None:
            return False
        if req in self.running:
            self.running.remove(req)
        elif req in self.deferred:
            self.deferred.remove(req)
        elif req in self.arriving:
            self.arriving.remove(req)
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
        if self.held:
            self.held.expire(now)
        if self.arriving:
            self._promote_arrivals(now)
        if self.paused == "all":
            return None
        if self.deferred and not self.paused:
            self._promote_ready(now)
        if not self.running and (self.paused or not self.waiting):
            return None
        cfg = self.config
        bs = cfg.block_size
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        scheduled = self._scheduled
        running = self.running
        preempted = False
        prefill_tokens = 0
        prefill_ctx = 0.0
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
                prefill_ctx += n * (computed + (n - 1) / 2)
            ctx += end
            i += 1
        if not preempted and not self.paused:
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
                prefill_ctx += n * (start + (n - 1) / 2)
                ctx += start + n
        if not scheduled:
            return None
        self.stats.iteration_tokens.observe(float(prefill_tokens + decodes))
        duration = (self._base + self._per_prefill * prefill_tokens
                    + self._per_prefill_ctx * prefill_ctx + self._per_seq * decodes
                    + self._per_ctx * ctx
                    + self._per_waiting * min(len(self.waiting), self._waiting_cap))
        duration = duration * self._noise.factor(now) + self._noise.stall(now)
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
                    self.held.hold(req.rid, req.transfer_blocks, now)
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
            queued = req.arrival if req.queued_at is None else req.queued_at
            stats.queue.observe(max(0.0, req.first_scheduled - queued))
            stats.inference.observe(now - req.first_scheduled)
        if req.first_token is not None:
            stats.decode.observe(now - req.first_token)
            if req.num_output > 1:
                stats.tpot.observe((now - req.first_token) / (req.num_output - 1))

    # -- sleep mode -----------------------------------------------------------
    def sleep(self, level: int, mode: SleepMode, now: float) -> list[SimRequest]:
        """Pause as vLLM does; returns the requests ``abort`` ended.

        abort: every request the scheduler holds ends now (``finish_reason`` abort, partial
        tokens kept). keep: nothing is scheduled; requests stay counted where they were.
        wait: running requests go on, nothing new is admitted; call :meth:`finish_sleep`
        once :attr:`num_running` is 0. Level 1 and 2 then drop the KV cache (requests still
        held are recomputed after the wake-up) and put weights and KV cache to sleep.
        """
        aborted: list[SimRequest] = []
        if mode == "abort":
            self._scheduled = []
            for queue in (self.running, self.deferred, self.waiting):
                for req in queue:
                    self._finish(req, "abort", now)
                    aborted.append(req)
            self.running, self.deferred = [], []
            self.waiting.clear()
        self.paused = "all" if mode == "keep" else "new"
        if mode != "wait":
            self.finish_sleep(level)
        return aborted

    def finish_sleep(self, level: int) -> None:
        """Complete a sleep once its mode allows it (at once, or drained for ``wait``)."""
        self._frozen = (self.num_running, self.num_waiting)
        if level >= 1:
            self._scheduled = []
            for req in reversed(self.deferred):
                self._requeue(req)
            self.deferred = []
            for req in reversed(self.running):
                self._requeue(req)
            self.running = []
            self.held.clear()
            self.pool.reset_cache()
            self._asleep_parts |= SLEEP_TAGS
        self.sleep_level = level

    def wake(self, tags: Sequence[str] | None = None) -> bool:
        """Wake all parts, or the tagged ones; returns whether the engine is fully awake.

        As vLLM's: ``scheduling`` only resumes a level-0 pause; a tag that is not asleep
        makes the call a no-op; the scheduler resumes once no part sleeps.
        """
        wanted = None if tags is None else [t for t in tags if t != "scheduling"]
        if wanted is None:
            self._asleep_parts.clear()
        elif wanted and all(t in self._asleep_parts for t in wanted):
            self._asleep_parts -= set(wanted)
        if self._asleep_parts:
            return False
        self.paused = ""
        self.sleep_level = None
        self._frozen = None
        return True
