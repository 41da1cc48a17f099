"""Run the real services against real NATS/Redis, in-process or as child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import yaml

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from shared.config import LoadedConfig, load_config
from shared.http_server import free_port
from shared.members import parse_member_key
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch, PoolSnapshot
from shared.subjects import Subjects

REPO = Path(__file__).resolve().parents[2]


IN_PROCESS_SELECT_BUDGET_MS = 3000
"""``global.select_timeout_ms`` of a test's services: they share the test's event loop (and a
busy 2-core machine), so a select may wait on a test's own work far past the 500 ms default."""


def write_config(path: Path, prefix: str, pools: list[dict[str, Any]], *,
                 interval: float = 0.2, metrics_ms: float = 200, log_level: str = "DEBUG",
                 api_port: int | None = None, stale_after_intervals: int | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """A config file for one test (own prefix, fast reload and scrape).

    ``stale_after_intervals``: scrape intervals after which metrics count as stale (the
    config's default when None). Tests whose selects must never see a stale member under a
    loaded suite give 10 (2 s at 200 ms), as one late scrape round is then not enough."""
    doc: dict[str, Any] = {
        "global": {"interval": interval, "api_port": api_port or free_port(),
                   "api_host": "127.0.0.1", "log_level": log_level, "prefix": prefix,
                   "select_timeout_ms": IN_PROCESS_SELECT_BUDGET_MS},
        "scheduler": {"pool_fetch_interval": 0.3, "metrics_fetch_interval": metrics_ms,
                      **({} if stale_after_intervals is None
                         else {"stale_after_intervals": stale_after_intervals})},
        # The lease the default 1 s scrape interval gives (2 s), not 2 x this test's fast
        # interval: a collector holds a pool only until its tick's start + the lease, and in
        # a loaded suite an in-process stack's tick can take longer than 200-400 ms (a lone
        # collector then scraped nothing for a whole test once).
        "collector": {"lease_ms": 2000},
        "modes": [{"name": "s1", "w_a": 0.8, "w_b": 0.2}],
        "pools": pools,
    }
    for key, value in (extra or {}).items():
        doc[key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def edit_config(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load, change and rewrite a config file (as an operator would edit it)."""
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class InProcess:
    """A service's ``serve`` coroutine running as a task in the test's event loop."""

    def __init__(self, serve: Callable[..., Awaitable[None]], loaded: LoadedConfig,
                 **kwargs: Any) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(serve(loaded, self.stop_event, **kwargs))

    async def stop(self) -> None:
        self.stop_event.set()
        try:
            await asyncio.wait_for(self.task, 10)
        except (asyncio.CancelledError, TimeoutError):
            self.task.cancel()


class ChildProcess:
    """``python -m services NAME --config FILE`` with NATS_URL/REDIS_URL set."""

    def __init__(self, name: str, config: Path, nats_url: str, redis_url: str,
                 log_dir: Path) -> None:
        env = dict(os.environ, NATS_URL=nats_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services", name, "--config",
                                          str(config)], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=env)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Bus:
    """The test's own NATS connection, publishing what a collector would."""

    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.enc = msgspec.json.Encoder()

    @classmethod
    async def connect(cls, url: str, prefix: str) -> Bus:
        return cls(await nats.connect(url), prefix)

    async def snapshot(self, pool: str, members: list[str], *, partition: str = "Common",
                       engine: str = "vllm", unavailable: tuple[str, ...] = ()) -> None:
        infos = []
        for key in members:
            host, port = parse_member_key(key)
            infos.append(MemberInfo(key=key, host=host.strip("[]"), port=port,
                                    available=key not in unavailable))
        snap = PoolSnapshot(pool=pool, partition=partition, engine_type=engine,
                            source="test", members=infos, fetched_at=time.time())
        await self.nc.publish(self.subjects.pool_snapshot(partition, pool), self.enc.encode(snap))
        await self.nc.flush()

    async def metrics(self, pool: str, values: dict[str, tuple[float, float, float] | None], *,
                      partition: str = "Common", age_s: float = 0.0) -> None:
        """values: key → (waiting, running, kv) or None for a failed scrape."""
        now = time.time() - age_s
        members = [
            MemberMetrics(key=k, scraped_at=now, ok=False, error="connect timeout") if v is None
            else MemberMetrics(key=k, scraped_at=now, ok=True, waiting_queue=v[0],
                               running_req=v[1], cache_usage=v[2])
            for k, v in values.items()
        ]
        batch = MetricsBatch(pool=pool, partition=partition, members=members,
                             round_started_at=now)
        await self.nc.publish(self.subjects.member_metrics(partition, pool),
                              self.enc.encode(batch))
        await self.nc.flush()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0,
                     what: str = "condition", seen: Callable[[], object] | None = None) -> None:
    """Poll ``check`` until true or fail the test after ``timeout_s`` (saying what ``seen``
    returns then, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if await check():
                return
        await asyncio.sleep(0.05)
    last = f"; last seen: {seen()}" if seen is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{last}")


def load(path: Path) -> LoadedConfig:
    return load_config(path)


@contextlib.asynccontextmanager
async def engines_running(config: EngineConfig, count: int) -> AsyncIterator[list[RunningEngine]]:
    """``count`` simulated engines of ``config``, each its own HTTP server; all stopped on exit
    (those already started too, when a later one fails to start)."""
    running: list[RunningEngine] = []
    try:
        for _ in range(count):
            running.append(await start_engine(config))
        yield running
    finally:
        for engine in running:
            await engine.stop()
