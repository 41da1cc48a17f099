"""Shared fixtures: the project's own capture-shaped fixtures and running simulated engines."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "enginesim"

# Like the captured server: "tiny", 512 tokens, 8 sequences; fast steps so tests stay short.
TINY = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=512,
                    max_num_seqs=8, num_gpu_blocks=1024, speed=20.0, seed=7)

StartEngine = Callable[..., Awaitable[RunningEngine]]


def fixture_json(name: str) -> Any:
    """A JSON fixture file."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixture_text(name: str) -> str:
    """A text fixture file."""
    return (FIXTURES / name).read_text(encoding="utf-8")


def shape(value: Any) -> Any:
    """Keys (in order) and value types, recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return ["list", shape(value[0])] if value else ["list"]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


@pytest.fixture
async def start() -> AsyncIterator[StartEngine]:
    """Start engines with config overrides; all are stopped at the end of the test."""
    started: list[RunningEngine] = []

    async def _start(config: EngineConfig = TINY, **changes: Any) -> RunningEngine:
        engine = await start_engine(dataclasses.replace(config, **changes))
        started.append(engine)
        return engine

    yield _start
    for engine in started:
        await engine.stop()


@pytest.fixture
async def engine(start: StartEngine) -> RunningEngine:
    """One tiny vLLM-like engine."""
    return await start()
