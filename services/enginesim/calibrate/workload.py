"""The open-loop workload: Poisson arrivals with uniform prompt and output lengths."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.enginesim.calibrate.client import Arrival


@dataclass(frozen=True)
class Workload:
    """Request shape of a level (the issue's trace: prompts 20-360, outputs 16-128 tokens)."""

    prompt_min: int = 20
    prompt_max: int = 360
    output_min: int = 16
    output_max: int = 128

    @property
    def mean_output(self) -> float:
        """Mean output length."""
        return (self.output_min + self.output_max) / 2

    @classmethod
    def parse(cls, prompts: str, outputs: str) -> Workload:
        """From ``"20-360"`` and ``"16-128"``; ValueError naming the bad one."""
        bounds = []
        for name, text in (("prompt tokens", prompts), ("output tokens", outputs)):
            try:
                low, high = (int(x) for x in text.split("-", 1))
            except ValueError:
                raise ValueError(f"{name}: expected MIN-MAX, got {text!r}") from None
            if not 1 <= low <= high:
                raise ValueError(f"{name}: need 1 <= MIN <= MAX, got {text!r}")
            bounds += [low, high]
        return cls(*bounds)


def poisson_arrivals(rate: float, duration: float, workload: Workload, seed: int
                     ) -> list[Arrival]:
    """Arrivals at ``rate``/s over ``duration`` seconds; the same seed gives the same trace."""
    rng = random.Random(f"{seed}:{rate}")
    out: list[Arrival] = []
    t = rng.expovariate(rate)
    while t < duration:
        out.append(Arrival(t, rng.randint(workload.prompt_min, workload.prompt_max),
                           rng.randint(workload.output_min, workload.output_max),
                           rng.getrandbits(48)))
        t += rng.expovariate(rate)
    return out
