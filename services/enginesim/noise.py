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

    def __init__(self, jitter: float, drift_sd: float, drift_tau_s: float, seed: int,
                 stall_rate_per_s: float = 0.0, stall_mean_s: float = 0.0) -> None:
        self.jitter = jitter
        self._stalls = Stalls(stall_rate_per_s, stall_mean_s, seed)
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

    def stall(self, now: float) -> float:
        """Seconds a step starting at ``now`` waits for a stall to end (0 outside one)."""
        return self._stalls.remaining(now)

    def factor(self, now: float) -> float:
        """The multiplier of a step starting at ``now``."""
        factor = self.drift(now)
        if self.jitter:
            factor *= max(0.5, 1.0 + self.jitter * self._rng.gauss(0.0, 1.0))
        return factor


class Stalls:
    """Spells in which the engine does nothing: exponential gaps and lengths, seeded.

    Like the slow path, the episodes are a function of the time since the first step and the
    seed alone, so real time and virtual time stall at the same moments.
    """

    def __init__(self, rate_per_s: float, mean_s: float, seed: int) -> None:
        self.rate_per_s = rate_per_s
        self.mean_s = mean_s
        self._rng = random.Random(seed ^ 0x57A11)
        self._start = math.inf
        self._end = math.inf
        """The current or next stall; infinite until the first step draws it."""

    def remaining(self, now: float) -> float:
        if self.rate_per_s <= 0 or self.mean_s <= 0:
            return 0.0
        if self._end == math.inf:  # the first step: the episodes count from here
            self._next(now)
        while self._end <= now:  # time only moves forward: walk past the stalls behind
            self._next(self._end)
        return self._end - now if self._start <= now else 0.0

    def _next(self, after: float) -> None:
        self._start = after + self._rng.expovariate(self.rate_per_s)
        self._end = self._start + self._rng.expovariate(1.0 / self.mean_s)
