"""Greybox layers 2 and 3: lowest predicted TTFT when the predictor is trusted, else least load.

Scores are ``best prediction / prediction`` (the best member scores 1), so the best
picker with an ``explore`` tolerance picks at random among members predicted within that
fraction of the best: replicas deciding at the same moment spread instead of herding.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import GreyboxConfig
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.load_scorer import LoadScorer
from shared.scheduling.predictor import features
from shared.scheduling.view import MemberState


def member_features(m: MemberState, ctx: DecisionContext) -> tuple[float, ...]:
    """What the predictor sees of ``m`` now (stale engine figures read as unknown: 0)."""
    if m.fresh(ctx.now, ctx.stale_after_s):
        return features(m.inflight, m.running_req or 0.0, m.waiting_queue or 0.0,
                        m.cache_usage or 0.0, ctx.prompt_tokens)
    return features(m.inflight, 0.0, 0.0, 0.0, ctx.prompt_tokens)


@dataclass(frozen=True, slots=True)
class GreyboxScorer:
    """Predicted TTFT in the medium-load zone; least load at low load or when unsure."""

    settings: GreyboxConfig
    name: str = "greybox"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        fallback = LoadScorer().score(ctx, members)
        predictor = ctx.predictor
        if predictor is None or not members:
            return fallback
        if min(m.inflight for m in members) <= self.settings.low_zone_inflight:
            return fallback  # low load: an idle member exists, any idle one will do
        predictions = []
        for m in members:
            ttft, trusted = predictor.predict((ctx.pool, ctx.partition, m.key),
                                              member_features(m, ctx))
            if not trusted:
                return fallback
            predictions.append(ttft)
        best = min(predictions)
        return [best / p if p > 0 else 1.0 for p in predictions]
