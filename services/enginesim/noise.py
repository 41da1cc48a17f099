"""Step-time noise: a slow Ornstein-Uhlenbeck multiplier times independent per-step jitter."""

# A real engine's speed wanders over seconds (other processes, caches, the front-end's own
# load): its throughput over 10 s windows swings by tens of percent. Independent per-step
# jitter averages out within a window; a correlated multiplier does not, and gives the
# queues and tails a real engine shows.
#
# The slow part is a path of time since the engine's first step, sampled on a grid from its
# own seeded generator: a real-time engine and a virtual-time run of the same trace with the
# same seed see the same slow spells at the same moments, so the two can be compared run
# for run rather than only on average.

from __future__ import annotations

import math
import random

GRID_PER_TAU = 20
"""Path samples per time constant (the path is constant between samples)."""


class StepNoise:
    """Multiplier of one engine's step times; seeded."""

    def __init__(self, jitter: float, drift_sd: float, drift_tau_s: float, seed: int) -> None:
        self.jitter = jitter
        self.drift_sd = drift_sd
        self.drift_tau_s = drift_tau_s
        self._rng = random.Random(seed)
        self._path_rng = random.Random(seed ^ 0xD21F7)
        self._dt = max(1e-3, drift_tau_s / GRID_PER_TAU) if drift_tau_s > 0 else 1.0
        self._decay = math.exp(-self._dt / drift_tau_s) if drift_tau_s > 0 else 0.0
        self._x = self._path_rng.gauss(0.0, drift_sd) if drift_sd > 0 else 0.0
        self._k = 0
        self._origin: float | None = None

    def drift(self, now: float) -> float:
        """The slow multiplier at ``now`` (mean 1: log-normal, mean-corrected)."""
        sd = self.drift_sd
        if sd <= 0:
            return 1.0
        if self._origin is None:
            self._origin = now
        # Time only moves forward: the path is walked to the grid point of ``now``.
        k = int((now - self._origin) / self._dt)
        if k > self._k:
            a = self._decay
            scale = sd * math.sqrt(1.0 - a * a)
            gauss = self._path_rng.gauss
            x = self._x
            for _ in range(k - self._k):
                x = x * a + scale * gauss(0.0, 1.0)
            self._x, self._k = x, k
        return math.exp(self._x - sd * sd / 2)

    def factor(self, now: float) -> float:
        """The multiplier of a step starting at ``now``."""
        factor = self.drift(now)
        if self.jitter:
            factor *= max(0.5, 1.0 + self.jitter * self._rng.gauss(0.0, 1.0))
        return factor
