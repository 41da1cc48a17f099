"""Counters and histograms the queueing model records, with vLLM's and SGLang's bucket sets."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
                           4096.0, 8192.0, 16384.0)
PREEMPTION_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0)
N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)

SGLANG_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                       5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0)
SGLANG_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                      60.0)
SGLANG_TPOT_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                       0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
SGLANG_ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04,
                      0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0)
SGLANG_QUEUE_BUCKETS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                        50.0, 60.0, 120.0, 300.0, 600.0)


def one_two_five(limit: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to ``limit`` (token-count histograms scale with max_model_len)."""
    out: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > limit:
                return tuple(out)
            out.append(float(value))
        scale *= 10


class Histogram:
    """Bucket counts (non-cumulative), sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` ``times`` times."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[int]:
        """Cumulative counts per bound, +Inf last."""
        total = 0
        out: list[int] = []
        for c in self.counts:
            total += c
            out.append(total)
        return out


@dataclass(frozen=True)
class BucketSet:
    """Histogram bounds of one engine flavour."""

    ttft: tuple[float, ...]
    itl: tuple[float, ...]
    tpot: tuple[float, ...]
    e2e: tuple[float, ...]
    queue: tuple[float, ...]
    tokens: tuple[float, ...]


def vllm_buckets(max_model_len: int) -> BucketSet:
    """vLLM's bounds."""
    return BucketSet(TTFT_BUCKETS, TOKEN_LATENCY_BUCKETS, TOKEN_LATENCY_BUCKETS,
                     REQUEST_LATENCY_BUCKETS, REQUEST_LATENCY_BUCKETS, one_two_five(max_model_len))


def sglang_buckets(max_model_len: int) -> BucketSet:
    """SGLang's bounds."""
    return BucketSet(SGLANG_TTFT_BUCKETS, SGLANG_ITL_BUCKETS, SGLANG_TPOT_BUCKETS,
                     SGLANG_E2E_BUCKETS, SGLANG_QUEUE_BUCKETS, one_two_five(max_model_len))


@dataclass
class EngineStats:
    """Everything the model counts; the metrics renderers read it."""

    buckets: BucketSet
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    external_queries: int = 0
    external_hits: int = 0
    preemptions: int = 0
    requests_finished: int = 0
    tokens_local_compute: int = 0
    tokens_cache_hit: int = 0
    tokens_external: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(init=False)
    itl: Histogram = field(init=False)
    tpot: Histogram = field(init=False)
    e2e: Histogram = field(init=False)
    queue: Histogram = field(init=False)
    inference: Histogram = field(init=False)
    prefill: Histogram = field(init=False)
    decode: Histogram = field(init=False)
    prompt_len: Histogram = field(init=False)
    generation_len: Histogram = field(init=False)
    max_generation: Histogram = field(init=False)
    params_max_tokens: Histogram = field(init=False)
    params_n: Histogram = field(init=False)
    num_preemptions: Histogram = field(init=False)
    prefill_computed: Histogram = field(init=False)
    iteration_tokens: Histogram = field(init=False)

    def __post_init__(self) -> None:
        b = self.buckets
        self.ttft = Histogram(b.ttft)
        self.itl = Histogram(b.itl)
        self.tpot = Histogram(b.tpot)
        self.e2e = Histogram(b.e2e)
        self.queue = Histogram(b.queue)
        self.inference = Histogram(b.e2e)
        self.prefill = Histogram(b.e2e)
        self.decode = Histogram(b.e2e)
        self.prompt_len = Histogram(b.tokens)
        self.generation_len = Histogram(b.tokens)
        self.max_generation = Histogram(b.tokens)
        self.params_max_tokens = Histogram(b.tokens)
        self.params_n = Histogram(N_BUCKETS)
        self.num_preemptions = Histogram(PREEMPTION_BUCKETS)
        self.prefill_computed = Histogram(b.tokens)
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)
