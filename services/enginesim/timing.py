"""The step-time model's parameters: one engine's costs, in milliseconds at speed 1."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Cost of requests and engine steps (see docs/enginesim.md, "The timing model")."""

    frontend_ms: float = 0.0
    """Fixed latency before the scheduler sees a request (HTTP, tokenising, IPC): a TTFT floor."""
    step_base_ms: float = 6.0
    """Fixed cost of every forward step (one pass over the weights)."""
    prefill_ms_per_token: float = 0.030
    """Cost of each uncached prompt token computed in a step."""
    prefill_ms_per_token_kctx: float = 0.0
    """Extra cost of a prompt token per 1,000 tokens of context before it (attention, quadratic)."""
    decode_ms_per_seq: float = 0.030
    """Extra cost of each decoding sequence in the batch."""
    attn_ms_per_ctx_token: float = 0.00004
    """Cost of reading one token of KV context (attention) in a step."""
    queue_ms_per_waiting: float = 0.0
    """Scheduling overhead per waiting request per step (throughput falls past saturation)."""
    queue_waiting_cap: float = 64.0
    """Waiting requests beyond which that overhead stops growing (the drop levels off)."""
    kv_transfer_ms_per_token: float = 0.003
    """Time to pull one prompt token's KV from a remote prefill instance."""
    jitter: float = 0.02
    """Relative standard deviation of independent per-step noise (seeded, clipped at -50 %)."""
    drift_sd: float = 0.0
    """Standard deviation of the slow log-normal step-time multiplier (Ornstein-Uhlenbeck)."""
    drift_tau_s: float = 5.0
    """Time constant of that multiplier, in seconds: how long a slow or fast spell lasts."""
    stall_rate_per_s: float = 0.0
    """Stalls per second of engine time: spells in which the engine admits and streams
    nothing (a CPU engine starved by its own front end; seeded, exponential gaps)."""
    stall_mean_s: float = 0.0
    """Mean length of a stall in seconds (exponentially distributed)."""
