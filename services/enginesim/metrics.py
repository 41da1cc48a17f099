"""vLLM's /metrics body (names, HELP, types, labels and order as vLLM 0.32.0 prints them)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.enginesim.http_stats import HttpStats
from services.enginesim.model import EngineModel
from services.enginesim.procmetrics import render_process
from services.enginesim.promtext import Exposition
from services.enginesim.stats import FINISH_REASONS, EngineStats, Histogram

SLEEP_OP_BUCKETS = (0.01, 0.1, 1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_MFU = " (for Model Flops Utilization calculations)."
_HELP_WAITING_REASON = (
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling "
    "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked "
    "status). Sum of all reasons equals vllm:num_requests_waiting.")
_HELP_SLEEP_STATE = (
    "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
    "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.")
_HELP_CACHED_BY_SOURCE = (
    "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host "
    "(offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
    "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
    "vllm:external_prefix_cache_hits.")
_EXT = ("External prefix cache {} from KV connector cross-instance cache sharing, in terms of "
        "number of {} tokens.")


@dataclass
class SleepOps:
    """Durations of sleep/wake operations (families appear after the first one)."""

    durations: dict[str, tuple[Histogram, float]] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)

    def record(self, operation: str, seconds: float) -> None:
        """Account one finished operation."""
        hist, _ = self.durations.setdefault(operation, (Histogram(SLEEP_OP_BUCKETS), time.time()))
        hist.observe(seconds)
        self.in_flight.setdefault(operation, 0)


def _histograms(stats: EngineStats) -> list[tuple[str, str, Histogram]]:
    return [
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", stats.prompt_len),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.",
         stats.generation_len),
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
         stats.iteration_tokens),
        ("vllm:request_max_num_generation_tokens",
         "Histogram of maximum number of requested generation tokens.", stats.max_generation),
        ("vllm:request_params_n", "Histogram of the n request parameter.", stats.params_n),
        ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
         stats.params_max_tokens),
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         stats.ttft),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
         stats.itl),
        ("vllm:request_time_per_output_token_seconds",
         "Histogram of time_per_output_token_seconds per request.", stats.tpot),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
         stats.e2e),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
         stats.queue),
        ("vllm:request_inference_time_seconds",
         "Histogram of time spent in RUNNING phase for request.", stats.inference),
        ("vllm:request_prefill_time_seconds",
         "Histogram of time spent in PREFILL phase for request.", stats.prefill),
        ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
         stats.decode),
        ("vllm:request_num_preemptions",
         "Histogram of the number of times a request was preempted.", stats.num_preemptions),
        ("vllm:request_prefill_kv_computed_tokens",
         "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
         stats.prefill_computed),
    ]


def _cache_config_labels(model: EngineModel) -> dict[str, str]:
    cfg = model.config
    return {
        "_block_size_resolved": "True", "block_size": str(cfg.block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None", "effective_attention_block_size": str(cfg.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False",
        "enable_prefix_caching": str(cfg.enable_prefix_caching), "engine": "0",
        "gpu_memory_utilization": str(cfg.gpu_memory_utilization), "hash_block_size": "None",
        "is_attention_free": "False", "kv_cache_dtype_skip_layers": "[]",
        "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(round(cfg.num_gpu_blocks * cfg.block_size
                                              / cfg.max_model_len, 2)),
        "kv_cache_memory_bytes": str(cfg.num_gpu_blocks * cfg.block_size * 131072),
        "kv_cache_size_tokens": str(cfg.num_gpu_blocks * cfg.block_size),
        "kv_offloading_backend": "native", "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False", "mamba_block_size": "None",
        "mamba_cache_dtype": "auto", "mamba_cache_mode": "none",
        "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "float32",
        "num_cpu_blocks": "None", "num_gpu_blocks": str(cfg.num_gpu_blocks),
        "num_gpu_blocks_override": str(cfg.num_gpu_blocks), "prefix_cache_retention_interval": "0",
        "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
        "replayssm_buffer_len": "16", "skip_page_size_padded": "None", "sliding_window": "None",
        "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "False",
    }


def render_vllm(model: EngineModel, http: HttpStats | None, sleep_ops: SleepOps,
                created: float) -> str:
    """The full body of GET /metrics in vLLM mode."""
    out = Exposition()
    render_process(out)
    name = model.config.model_names[0]
    base = {"engine": "0", "model_name": name}
    stats = model.stats

    def counter(metric: str, help_text: str, value: float) -> None:
        out.counter(metric, help_text, [(base, value, created)])

    for what in ("flops", "read_bytes", "write_bytes"):
        noun = {"flops": "number of floating point operations",
                "read_bytes": "number of bytes read from memory",
                "write_bytes": "number of bytes written to memory"}[what]
        counter(f"vllm:estimated_{what}_per_gpu", f"Estimated {noun} per GPU{_MFU}", 0.0)
    out.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              [(base, model.reported_running)])
    out.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
              [(base, model.reported_waiting)])
    out.gauge("vllm:num_requests_waiting_by_reason", _HELP_WAITING_REASON, [
        ({**base, "reason": "capacity"}, model.reported_waiting - model.reported_deferred),
        ({**base, "reason": "deferred"}, model.reported_deferred)])
    # As vLLM records it: set by each completed sleep call, reset by a full wake-up only.
    level = model.sleep_level
    out.gauge("vllm:engine_sleep_state", _HELP_SLEEP_STATE, [
        ({**base, "sleep_state": "awake"}, float(level is None)),
        ({**base, "sleep_state": "weights_offloaded"}, float(level == 1)),
        ({**base, "sleep_state": "discard_all"}, float(level == 2))])
    out.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
              [(base, model.kv_usage)])
    counter("vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.", stats.prefix_queries)
    counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_hits)
    counter("vllm:external_prefix_cache_queries", _EXT.format("queries", "queried"),
            stats.external_queries)
    counter("vllm:external_prefix_cache_hits", _EXT.format("hits", "cached"), stats.external_hits)
    counter("vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.", 0.0)
    counter("vllm:mm_cache_hits",
            "Multi-modal cache hits, in terms of number of cached items.", 0.0)
    counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            stats.preemptions)
    counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
    out.counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", [
        ({**base, "source": "local_compute"}, stats.tokens_local_compute, created),
        ({**base, "source": "local_cache_hit"}, stats.tokens_cache_hit, created),
        ({**base, "source": "external_kv_transfer"}, stats.tokens_external, created)])
    counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).",
            stats.tokens_cache_hit + stats.tokens_external)
    by_source = {"device": stats.tokens_cache_hit, "host": 0, "p2p": stats.tokens_external,
                 "disk": 0, "external_unspecified": 0}
    out.counter("vllm:prompt_tokens_cached_by_source", _HELP_CACHED_BY_SOURCE,
                [({**base, "source": s}, v, created) for s, v in by_source.items()])
    counter("vllm:generation_tokens", "Number of generation tokens processed.",
            stats.generation_tokens)
    out.counter("vllm:request_success", "Count of successfully processed requests.",
                [({**base, "finished_reason": r}, stats.finished[r], created)
                 for r in FINISH_REASONS])
    out.counter("vllm:admission_rejections",
                "Number of admission attempts rejected by a queue limit, by reason.",
                [({"model_name": name, "reason": r}, 0.0, created)
                 for r in ("max_num_queued_reqs", "max_num_queued_tokens")])
    for metric, help_text, hist in _histograms(stats):
        out.histogram(metric, help_text, [(base, hist, created)])
    out.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              [(_cache_config_labels(model), 1.0)])
    if http is not None:
        http.render(out)
    if sleep_ops.durations:
        out.histogram("vllm:sleep_mode_operation_duration_seconds",
                      "Duration of one sleep-mode operation.",
                      [({"operation": op}, h, c) for op, (h, c) in sleep_ops.durations.items()])
        out.gauge("vllm:sleep_mode_operations_in_flight",
                  "Sleep-mode operations currently awaited.",
                  [({"operation": op}, float(n)) for op, n in sleep_ops.in_flight.items()])
    return out.text()
