"""Scorer ``cache_affinity``: prefix-cache affinity weighed against load (no hot spots).

Trusted predictor (greybox layer 2): each member's TTFT is predicted for the part of the
prompt it would compute (its cached tokens removed), then divided by 1 + margin × the share
of the prompt it holds, so a warm member keeps the request while its prediction stays
within that margin of the best cold member's. Its queue is in the prediction: once it is
the bottleneck the affinity breaks by itself. Untrusted predictor: bounded load — the
member holding the longest prefix wins among those whose in-flight count is at most
``load_bound`` × the pool's mean + 1, counts taken in units of each member's decode speed
(its engine's inter-token latency, when known); nobody warm within the bound: least load.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.prefix_config import CacheAwareConfig
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.load_scorer import LoadScorer
from shared.scheduling.plugins.speed import speed_weights
from shared.scheduling.predictor import features
from shared.scheduling.view import MemberState


def prefix_features(m: MemberState, ctx: DecisionContext) -> tuple[float, ...]:
    """The predictor's inputs for ``m``, with the prompt cut to what ``m`` must compute."""
    prompt = ctx.prompt_tokens
    if ctx.keys is not None:
        prompt = ctx.keys.uncached(m.key, prompt)
    if m.fresh(ctx.now, ctx.stale_after_s):
        return features(m.inflight, m.running_req or 0.0, m.waiting_queue or 0.0,
                        m.cache_usage or 0.0, prompt)
    return features(m.inflight, 0.0, 0.0, 0.0, prompt)


@dataclass(frozen=True, slots=True)
class CacheAffinityScorer:
    """Predicted TTFT with the cache taken into account; bounded-load affinity when unsure."""

    settings: CacheAwareConfig
    name: str = "cache_affinity"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        if not members:
            return []
        keys = ctx.keys
        prompt = ctx.prompt_tokens
        share = [keys.fraction(m.key, prompt) if keys is not None else 0.0 for m in members]
        predicted = self._predict(ctx, members)
        if predicted is not None:
            margin = self.settings.affinity_margin
            effective = [p / (1.0 + margin * f) for p, f in zip(predicted, share, strict=True)]
            best = min(effective)
            return [best / e if e > 0 else 1.0 for e in effective]
        load = LoadScorer().score(ctx, members)
        # In-flight counts in units of each member's speed: a member decoding at half the
        # pool's mean speed counts each request twice, so affinity leaves it sooner.
        weighted = [m.inflight / w for m, w in zip(members, speed_weights(members), strict=True)]
        bound = self.settings.load_bound * sum(weighted) / len(members) + 1
        warm = [f > 0 and n <= bound for n, f in zip(weighted, share, strict=True)]
        if not any(warm):
            return load
        # Warm members within the bound rank above everyone (longest prefix first, then
        # least load); the others keep their load order below them.
        return [0.5 + 0.45 * f + 0.05 * (ld or 0.0) if w else 0.5 * (ld or 0.0)
                for f, w, ld in zip(share, warm, load, strict=True)]

    @staticmethod
    def _predict(ctx: DecisionContext, members: list[MemberState]) -> list[float] | None:
        predictor = ctx.predictor
        if predictor is None:
            return None
        out = []
        for m in members:
            ttft, trusted = predictor.predict((ctx.pool, ctx.partition, m.key),
                                              prefix_features(m, ctx))
            if not trusted:
                return None
            out.append(ttft)
        return out
