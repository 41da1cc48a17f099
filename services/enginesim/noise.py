"""Step-time noise: a slow Ornstein-Uhlenbeck multiplier times independent per-step jitter."""

# A real engine's speed wanders over seconds (other processes, caches, the front-end's own
# load): its throughput over 10 s windows swings by tens of percent. Independent per-step
# jitter averages out within a window; a correlated multiplier does not, and gives the
# queues and tails a real engine shows.

from __future__ import annotations

import math
import random


class StepNoise:
    """Multiplier of one engine's step times; seeded, a pure function of the step times asked."""

    def __init__(self, jitter: float, drift_sd: float, drift_tau_s: float, seed: int) -> None:
        self.jitter = jitter
        self.drift_sd = drift_sd
        self.drift_tau_s = drift_tau_s
        self._rng = random.Random(seed)
        # The log-multiplier starts in its stationary distribution.
        self._x = self._rng.gauss(0.0, drift_sd) if drift_sd > 0 else 0.0
        self._t: float | None = None

    def drift(self, now: float) -> float:
        """The slow multiplier at ``now`` (mean 1: log-normal, mean-corrected)."""
        sd = self.drift_sd
        if sd <= 0:
            return 1.0
        if self._t is not None and now > self._t:
            decay = math.exp(-(now - self._t) / self.drift_tau_s) if self.drift_tau_s > 0 else 0.0
            self._x = self._x * decay + sd * math.sqrt(1.0 - decay * decay) * self._rng.gauss(0, 1)
        if self._t is None or now > self._t:
            self._t = now
        return math.exp(self._x - sd * sd / 2)

    def factor(self, now: float) -> float:
        """The multiplier of a step starting at ``now``."""
        factor = self.drift(now)
        if self.jitter:
            factor *= max(0.5, 1.0 + self.jitter * self._rng.gauss(0.0, 1.0))
        return factor
