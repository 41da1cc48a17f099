"""A shared-prefix workload: many tenants, each with a long system prompt, multi-turn sessions.

Each tenant has its own system prompt (``system_tokens`` words, ±25 %); tenants' traffic
is Zipf-skewed. Sessions arrive as a Poisson process (bursty on/off if asked); a session
has a geometric number of turns, ``think_s`` apart on average; turn k sends the system
prompt, the k user messages so far and the k − 1 answers before them. Text is words of
the simulator's vocabulary: one word is one token for the simulated engines, so a prompt's
token ids (its KV blocks) and its text (the gateway's character blocks) describe the same
prompt. Everything is seeded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from services.enginesim.tokenizer import FILLER_WORDS, encode_chat


@dataclass(frozen=True)
class PrefixSpec:
    """What the workload looks like; ``rate`` is requests per second (all turns)."""

    tenants: int = 64
    system_tokens: int = 3000
    zipf: float = 0.8
    """Tenant popularity ∝ 1 / rank^zipf."""
    turns_mean: float = 3.0
    think_s: float = 4.0
    user_tokens: int = 60
    answer_tokens: int = 60
    output_median: int = 30
    rate: float = 10.0
    duration_s: float = 60.0
    burst_factor: float = 1.0
    """ON periods (5 s of every 15) at this multiple of the mean rate; 1: steady."""
    seed: int = 0


@dataclass(frozen=True)
class PrefixRequest:
    """One request of the workload, in every form a router or an engine needs."""

    arrival_s: float
    tenant: int
    session: str
    turn: int
    messages: list[dict[str, Any]]
    output_tokens: int
    token_ids: list[int] = field(repr=False)

    @property
    def input_tokens(self) -> int:
        return len(self.token_ids)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(max(1, n)))


def _session_starts(spec: PrefixSpec, rng: random.Random, session_rate: float) -> list[float]:
    """Poisson session arrivals, thinned to the on/off profile when bursty."""
    cycle, on_s = 15.0, 5.0
    on = session_rate * spec.burst_factor
    off = max(0.0, (session_rate * cycle - on * on_s) / (cycle - on_s))
    peak = max(on, off, 1e-9)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= spec.duration_s:
            return out
        current = on if spec.burst_factor <= 1 or (t % cycle) < on_s else off
        if rng.random() * peak <= current:
            out.append(t)


def generate(spec: PrefixSpec) -> list[PrefixRequest]:
    """The workload's requests in arrival order."""
    rng = random.Random(spec.seed)
    prompts_rng = random.Random(1_000_003)  # tenants' system prompts are the same every seed
    systems = [_words(prompts_rng, round(spec.system_tokens * prompts_rng.uniform(0.75, 1.25)))
               for _ in range(spec.tenants)]
    weights = [1 / (rank + 1) ** spec.zipf for rank in range(spec.tenants)]
    p_end = 1 / max(1.0, spec.turns_mean)
    starts = _session_starts(spec, rng, spec.rate / max(1.0, spec.turns_mean))
    out: list[PrefixRequest] = []
    for s, start in enumerate(starts):
        tenant = rng.choices(range(spec.tenants), weights)[0]
        messages: list[dict[str, Any]] = [{"role": "system", "content": systems[tenant]}]
        t, turn = start, 0
        while t < spec.duration_s:
            turn += 1
            messages = [*messages, {"role": "user", "content": _words(
                rng, round(spec.user_tokens * math.exp(rng.gauss(0, 0.5))))}]
            output = max(4, round(spec.output_median * math.exp(rng.gauss(0, 0.5))))
            out.append(PrefixRequest(arrival_s=t, tenant=tenant, session=f"s{spec.seed}-{s}",
                                     turn=turn, messages=messages, output_tokens=output,
                                     token_ids=encode_chat(messages)))
            if rng.random() < p_end:
                break
            messages = [*messages, {"role": "assistant", "content": _words(
                rng, spec.answer_tokens)}]
            t += rng.expovariate(1 / spec.think_s)
    out.sort(key=lambda r: r.arrival_s)
    return out
