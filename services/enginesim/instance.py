"""One simulated engine instance: model, runner, stats, faults and identity, passed to routes."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from typing import Any

from services.enginesim.clock import Clock
from services.enginesim.config import EngineConfig
from services.enginesim.faults import FaultDice, Faults
from services.enginesim.http_stats import HttpStats
from services.enginesim.metrics import SleepOps, render_vllm
from services.enginesim.metrics_sglang import ThroughputMeter, render_sglang
from services.enginesim.model import EngineModel
from services.enginesim.runner import EngineRunner
from services.enginesim.tokenizer import FillerText


def _exit_process(mode: str) -> None:
    os._exit(1)


class EngineInstance:
    """Everything one simulated server holds; created per port, never shared."""

    def __init__(self, config: EngineConfig, *, host: str = "127.0.0.1", port: int = 0,
                 clock: Clock | None = None) -> None:
        self.config = config.validate()
        self.model = EngineModel(self.config)
        self.runner = EngineRunner(self.model, clock)
        self.http_stats = HttpStats()
        self.sleep_ops = SleepOps()
        self.faults = Faults()
        self.dice = FaultDice(config.seed)
        self.filler = FillerText(config.seed, config.fake_response)
        self.meter = ThroughputMeter()
        self.created = time.time()
        self.host = host
        self.port = port
        self._ids = random.Random(config.seed ^ 0x1D5)
        self.engine_id = self.hex(32)
        self.fingerprint: str | None = (
            f"vllm-{config.version}-{self.hex(8)}" if config.engine == "vllm" else None)
        self.on_crash: Callable[[str], None] = _exit_process
        self.kv_notices: set[asyncio.Task[None]] = set()
        """Decode side: KV-pulled notices to prefill engines still being sent."""

    @property
    def is_sglang(self) -> bool:
        """SGLang flavour."""
        return self.config.engine == "sglang"

    def hex(self, digits: int) -> str:
        """Seeded hex digits for ids."""
        return f"{self._ids.getrandbits(digits * 4):0{digits}x}"

    def metrics_text(self) -> str:
        """The /metrics body for this engine flavour."""
        if self.is_sglang:
            return render_sglang(self.model, self.meter, time.monotonic())
        return render_vllm(self.model, self.http_stats, self.sleep_ops, self.created)

    def state(self) -> dict[str, Any]:
        """GET /_sim/state: the model's gauges and counters."""
        model = self.model
        stats = model.stats
        cfg = self.config
        return {
            "engine": cfg.engine, "model": cfg.model_names[0], "role": cfg.role,
            "speed": cfg.speed, "running": model.num_running, "waiting": model.num_waiting,
            "arriving": len(model.arriving), "reported_running": model.reported_running,
            "reported_waiting": model.reported_waiting, "kv_usage": model.kv_usage,
            "kv_held": len(model.held), "is_sleeping": model.is_sleeping, "paused": model.paused,
            "sleep_level": model.sleep_level, "steps": model.steps,
            "busy_time": model.busy_time, "prefix_cache_queries": stats.prefix_queries,
            "prefix_cache_hits": stats.prefix_hits, "preemptions": stats.preemptions,
            "finished": dict(stats.finished), "faults": self.faults.as_dict(),
        }
