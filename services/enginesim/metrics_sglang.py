"""SGLang's /metrics body (multiprocess registry: no _created, histogram _sum first)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.enginesim.model import EngineModel
from services.enginesim.procmetrics import render_process
from services.enginesim.promtext import Exposition


@dataclass
class ThroughputMeter:
    """Generation throughput over the last interval (sglang:gen_throughput)."""

    last_time: float = 0.0
    last_tokens: int = 0
    value: float = 0.0
    window: float = field(default=1.0)

    def update(self, now: float, tokens: int) -> float:
        """Refresh the rate when a window has passed; returns the current value."""
        if now - self.last_time >= self.window:
            if self.last_time:
                self.value = (tokens - self.last_tokens) / (now - self.last_time)
            self.last_time, self.last_tokens = now, tokens
        return self.value


def render_sglang(model: EngineModel, meter: ThroughputMeter, now: float) -> str:
    """The full body of GET /metrics in SGLang mode."""
    out = Exposition(created=False, sum_first=True)
    render_process(out)
    cfg = model.config
    engine_type = {"both": "unified", "prefill": "prefill", "decode": "decode"}[cfg.role]
    base = {"engine_type": engine_type, "model_name": cfg.model_names[0], "pp_rank": "0",
            "tp_rank": "0"}
    stats = model.stats
    total_tokens = cfg.num_gpu_blocks * cfg.block_size
    used = round(model.kv_usage * total_tokens)
    hit_rate = stats.prefix_hits / stats.prefix_queries if stats.prefix_queries else 0.0
    out.counter_plain("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                      [(base, stats.prompt_tokens)])
    out.counter_plain("sglang:generation_tokens_total", "Number of generation tokens processed.",
                      [(base, stats.generation_tokens)])
    out.counter_plain("sglang:cached_tokens_total", "Number of cached prompt tokens.",
                      [(base, stats.tokens_cache_hit)])
    out.counter_plain("sglang:num_requests_total", "Number of requests processed.",
                      [(base, stats.requests_finished)])
    out.counter_plain("sglang:num_aborted_requests_total", "Number of requests aborted.",
                      [(base, stats.finished["abort"])])
    out.gauge("sglang:token_usage", "The token usage", [(base, model.kv_usage)])
    out.gauge("sglang:cache_hit_rate", "The cache hit rate", [(base, hit_rate)])
    out.histogram("sglang:time_to_first_token_seconds",
                  "Histogram of time to first token in seconds.", [(base, stats.ttft, 0.0)])
    out.histogram("sglang:e2e_request_latency_seconds",
                  "Histogram of End-to-end request latency in seconds", [(base, stats.e2e, 0.0)])
    out.histogram("sglang:time_per_output_token_seconds",
                  "Histogram of time per output token in seconds.", [(base, stats.tpot, 0.0)])
    out.histogram("sglang:inter_token_latency_seconds",
                  "Histogram of inter-token latency in seconds.", [(base, stats.itl, 0.0)])
    out.histogram("sglang:queue_time_seconds", "Histogram of queueing time in seconds.",
                  [(base, stats.queue, 0.0)])
    out.gauge("sglang:num_running_reqs", "The number of running requests",
              [(base, model.num_running)])
    out.gauge("sglang:num_used_tokens", "The number of used tokens", [(base, float(used))])
    out.gauge("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.",
              [(base, float(total_tokens))])
    out.gauge("sglang:gen_throughput", "The generate throughput (token/s)",
              [(base, meter.update(now, stats.generation_tokens))])
    out.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue",
              [(base, model.num_waiting)])
    return out.text()
