"""Stacks of the real-time shared-prefix benchmark: a fresh fleet per run, and each router.

Reuses ``realstack`` (child processes, readiness polls, vllm-router) and adds what the
shared-prefix runs need: engines with prefix caching and KV-cache events (vLLM's
``--kv-events-config``: PUB on the engine's port + 1000, replay on + 2000), llmsched with a
cache-aware pool, and sglang-router.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.routing.realstack import (
    MODEL,
    PEERS_VENV,
    Fleet,
    Processes,
    StackError,
    enginesim_argv,
    fetch,
    normal_priority,
    poll,
    raise_priority,
)
from services.enginesim.config import EngineConfig
from shared.http_server import free_port
from shared.promparse import parse_selected

ALIAS = "bench-prefix"
POOL = "prefix"
EVENTS_OFFSET, REPLAY_OFFSET = 1000, 2000
HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
SUCCESS = "vllm:request_success_total"


def _port_with_events() -> int:
    """A free port whose +1000 and +2000 are free too (the engine's KV event sockets)."""
    for _ in range(200):
        port = free_port()
        if port + REPLAY_OFFSET < 65536:
            try:
                with contextlib.ExitStack() as stack:
                    import socket

                    for p in (port + EVENTS_OFFSET, port + REPLAY_OFFSET):
                        s = stack.enter_context(socket.socket())
                        s.bind(("127.0.0.1", p))
                return port
            except OSError:
                continue
    raise StackError("no free port with free +1000 and +2000")


@contextlib.contextmanager
def prefix_fleet_procs(workdir: Path, engines: Sequence[EngineConfig], *, nice: int = 0
                       ) -> Iterator[Fleet]:
    """The engines as one ``engine-sim`` process each, publishing KV-cache events."""
    ports = [_port_with_events() for _ in engines]
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    events = json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                         "endpoint": f"tcp://*:{{port+{EVENTS_OFFSET}}}",
                         "replay_endpoint": f"tcp://*:{{port+{REPLAY_OFFSET}}}"})
    try:
        for index, (cfg, port) in enumerate(zip(engines, ports, strict=True)):
            argv = [*enginesim_argv([cfg], [port]), "--kv-events-config", events]
            child = procs.start(f"enginesim-{index}", argv)
            if nice:
                raise_priority(child.proc.pid, nice)
        yield Fleet(procs, ports, [cfg.speed for cfg in engines])
    finally:
        procs.stop()


@dataclass
class CacheCounters:
    """An engine's prefix-cache counters and finished requests."""

    hits: float
    queries: float
    success: float


async def cache_counters(fleet: Fleet, session: aiohttp.ClientSession) -> list[CacheCounters]:
    out = []
    for url in fleet.urls:
        status, body = await fetch(session, "GET", url + "/metrics")
        if status != 200:
            raise StackError(f"{url}/metrics answered {status}")
        series = parse_selected(body.decode(), frozenset({HITS, QUERIES, SUCCESS}))

        def total(name: str, series: Any = series) -> float:
            return float(sum(value for _labels, value in series.get(name, [])))

        out.append(CacheCounters(total(HITS), total(QUERIES), total(SUCCESS)))
    return out


@dataclass(frozen=True)
class PrefixStackSpec:
    """How llmsched routes one run."""

    mode: dict[str, Any]
    schedulers: int = 1
    precise: bool = False
    metrics_ms: float = 200.0


def llmsched_config(spec: PrefixStackSpec, prefix: str, api_port: int, keys: Sequence[str]
                    ) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "name": POOL, "engine_type": "vllm", "source": "static", "model": ALIAS,
        "served_model_name": MODEL, "mode": spec.mode["name"], "members": list(keys)}
    if spec.precise:
        pool["tokenizer"] = "enginesim"
        pool["kv_events"] = {"endpoint": f"tcp://{{host}}:{{port+{EVENTS_OFFSET}}}",
                             "replay": f"tcp://{{host}}:{{port+{REPLAY_OFFSET}}}",
                             "block_size": 16}
    return {
        "global": {"interval": 60, "api_host": "127.0.0.1", "api_port": api_port,
                   "log_level": "WARNING", "prefix": prefix, "select_timeout_ms": 500},
        "scheduler": {"pool_fetch_interval": 10, "metrics_fetch_interval": spec.metrics_ms},
        "modes": [spec.mode],
        "gateway": {"max_ongoing_requests": 2000, "hold_queue_size": 2000},
        "pools": [pool],
    }


@contextlib.contextmanager
def running_prefix_llmsched(workdir: Path, spec: PrefixStackSpec, keys: Sequence[str]
                            ) -> Iterator[tuple[Processes, str]]:
    """NATS, Valkey, scheduler replicas, a collector and one API; yields the API URL."""
    from shared.embedded import nats_server, valkey_server

    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    with contextlib.ExitStack() as cleanup, normal_priority():
        nats = nats_server(workdir=str(workdir)).start()
        cleanup.callback(nats.stop)
        valkey = valkey_server(workdir=str(workdir)).start()
        cleanup.callback(valkey.stop)
        cleanup.callback(procs.stop)
        prefix = f"prefix_{os.getpid()}_{secrets.token_hex(3)}"
        env = dict(os.environ, NATS_URL=nats.url, REDIS_URL=valkey.url, PYTHONUNBUFFERED="1")
        port = free_port()
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(llmsched_config(spec, prefix, port, keys),
                                       sort_keys=False))
        service = [sys.executable, "-m", "services"]
        for index in range(spec.schedulers):
            procs.start(f"scheduler-{index}", [*service, "scheduler", "--config", str(path)],
                        env)
        procs.start("collector", [*service, "collector", "--config", str(path)], env)
        procs.start("api", [*service, "api", "--config", str(path)], env)
        yield procs, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def running_sglang_router(workdir: Path, urls: Sequence[str], policy: str,
                          venv: Path = PEERS_VENV) -> Iterator[tuple[Processes, str]]:
    """sglang-router (PyPI) over ``urls`` with ``policy``."""
    exe = venv / "bin" / "sglang-router"
    if not exe.exists():
        raise StackError(f"{exe} is missing (pip install sglang-router into {venv})")
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    port = free_port()
    try:
        with normal_priority():
            procs.start("sglang-router", [
                str(exe), "launch", "--host", "127.0.0.1", "--port", str(port),
                "--worker-urls", *urls, "--policy", policy,
                "--prometheus-port", str(free_port()), "--log-level", "warn"])
        yield procs, f"http://127.0.0.1:{port}"
    finally:
        procs.stop()


async def wait_chat(procs: Processes, url: str, model: str, session: aiohttp.ClientSession,
                    what: str) -> None:
    body = json.dumps({"model": model, "max_tokens": 2,
                       "messages": [{"role": "user", "content": "ready?"}]}).encode()

    async def answers() -> tuple[bool, str]:
        status, text = await fetch(session, "POST", url + "/v1/chat/completions", body)
        return status == 200, f"{status} {text[:200]!r}"

    await poll(what, procs, answers, 90)
