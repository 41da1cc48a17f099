"""A closed loop in virtual time: the saturation probe's workload run on the model."""

from __future__ import annotations

import random

from services.enginesim.calibrate.workload import Workload
from services.enginesim.config import EngineConfig
from services.enginesim.model import EngineModel, SimRequest


def closed_loop_throughput(config: EngineConfig, workload: Workload, concurrency: int,
                           seconds: float, seed: int = 0, warmup: float = 2.0) -> float:
    """Output tokens/s with ``concurrency`` requests always in the engine (one replaces each
    that finishes), counted after ``warmup`` seconds, as the saturation probe counts them."""
    model = EngineModel(config)
    rng = random.Random(seed)
    bs = config.block_size
    count = 0
    produced = 0
    now = 0.0

    def new(at: float) -> None:
        nonlocal count
        count += 1
        length = rng.randint(workload.prompt_min, workload.prompt_max)
        out = rng.randint(workload.output_min, workload.output_max)
        hashes = [hash((seed, count, b)) for b in range(length // bs)]
        model.add(SimRequest(str(count), length, hashes, max_tokens=out), at)

    for _ in range(concurrency):
        new(0.0)
    end = warmup + seconds
    while now < end:
        duration = model.begin_step(now)
        if duration is None:
            wake = model.next_wakeup()
            if wake is None:
                break
            now = max(now, wake)
            continue
        now += duration
        for req in model.finish_step(now):
            if now > warmup:
                produced += 1
            if req.finish_reason is not None:
                new(now)
    return produced / seconds
