"""A TTFT predictor per member, learned online from observed TTFTs (seed 003's layer 2).

Per member, an exponentially-forgetting ridge regression of log(TTFT) on what the router
knows when it routes: its own in-flight count, the engine's running and waiting counts
and KV usage, and the prompt's length. One model per member, so a fleet of unequal
engines is learned engine by engine; log scale, so the model minds relative error (0.2 s
vs 0.5 s) instead of fitting the huge queueing delays of saturation; numpy solves the
small normal equations. Predictions are plain dot products (no numpy on the hot path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FEATURES = ("bias", "inflight", "running", "waiting", "kv_usage", "log_prompt")
N = len(FEATURES)


@dataclass(frozen=True)
class PredictorSettings:
    """Knobs of the online model."""

    min_samples: int = 20
    """Observations a member needs before its predictions are trusted."""
    forgetting: float = 0.995
    """Weight kept by the past at each new observation (half-life ~140 observations)."""
    ridge: float = 1.0
    """L2 penalty: keeps a young model near zero slopes instead of wild ones."""
    max_residual: float = 0.8
    """Trusted only while the recent RMS error of log(TTFT) stays below this (e^0.8 ≈ 2.2×)."""
    residual_decay: float = 0.95
    min_ttft_s: float = 0.001
    """Observed TTFTs are clamped to this before the log."""


@dataclass
class MemberModel:
    """One member's regression and how well it has been doing."""

    a: np.ndarray = field(default_factory=lambda: np.zeros((N, N)))
    b: np.ndarray = field(default_factory=lambda: np.zeros(N))
    weights: tuple[float, ...] = (0.0,) * N
    samples: int = 0
    mse: float = 1.0
    """Exponentially weighted mean squared error of log(TTFT) before each update."""


def features(inflight: float, running: float, waiting: float, kv_usage: float,
             prompt_tokens: float) -> tuple[float, ...]:
    """The regression's inputs, in FEATURES order."""
    return (1.0, inflight, running, waiting, kv_usage, math.log1p(max(0.0, prompt_tokens)))


class TtftPredictor:
    """Models keyed by member identity (pool, partition, member key)."""

    def __init__(self, settings: PredictorSettings | None = None) -> None:
        self.settings = settings or PredictorSettings()
        self.models: dict[tuple[str, str, str], MemberModel] = {}
        self._ridge = np.eye(N) * self.settings.ridge

    def learn(self, member: tuple[str, str, str], x: tuple[float, ...], ttft_s: float) -> None:
        """One observation: the features the request was routed on, and its TTFT."""
        s = self.settings
        if len(x) != N or not math.isfinite(ttft_s):
            return
        model = self.models.setdefault(member, MemberModel())
        y = math.log(max(s.min_ttft_s, ttft_s))
        if model.samples:
            error = y - _dot(model.weights, x)
            model.mse = s.residual_decay * model.mse + (1 - s.residual_decay) * error * error
        vec = np.asarray(x)
        model.a = s.forgetting * model.a + np.outer(vec, vec)
        model.b = s.forgetting * model.b + vec * y
        model.weights = tuple(float(w) for w in np.linalg.solve(model.a + self._ridge, model.b))
        model.samples += 1

    def predict(self, member: tuple[str, str, str], x: tuple[float, ...]
                ) -> tuple[float, bool]:
        """Predicted TTFT in seconds and whether the member's model is trusted."""
        model = self.models.get(member)
        if model is None:
            return math.nan, False
        log_ttft = min(_dot(model.weights, x), 8.0)  # e^8 s: beyond it, all equally bad
        trusted = (model.samples >= self.settings.min_samples
                   and math.sqrt(model.mse) <= self.settings.max_residual)
        return math.exp(log_ttft), trusted

    def describe(self, member: tuple[str, str, str]) -> dict[str, float | int | bool]:
        """What the model of ``member`` has learned (for status pages)."""
        model = self.models.get(member)
        if model is None:
            return {"samples": 0}
        return {"samples": model.samples, "rms_log_error": round(math.sqrt(model.mse), 4),
                "trusted": (model.samples >= self.settings.min_samples
                            and math.sqrt(model.mse) <= self.settings.max_residual),
                **{f"w_{name}": round(w, 5) for name, w in zip(FEATURES, model.weights,
                                                               strict=True)}}

    def forget(self, member: tuple[str, str, str]) -> None:
        self.models.pop(member, None)


def _dot(w: tuple[float, ...], x: tuple[float, ...]) -> float:
    return w[0] * x[0] + w[1] * x[1] + w[2] * x[2] + w[3] * x[3] + w[4] * x[4] + w[5] * x[5]
