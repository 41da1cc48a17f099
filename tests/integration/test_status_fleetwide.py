"""Pool status counts the selections of every scheduler replica, across restarts and outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.api.main import serve as serve_api
from services.scheduler.main import serve as serve_scheduler
from shared.subjects import RedisKeys
from tests.integration.conftest import Stack
from tests.integration.system import Bus, InProcess, edit_config, load, wait_until, write_config
from tests.servers import private_valkey

pytestmark = pytest.mark.integration

A, B = "10.0.0.1:8000", "10.0.0.2:8000"
POOL = {"name": "p1", "engine_type": "vllm", "source": "static", "members": [A, B]}
SELECTS = 1001
STATUS = "/pools/p1/Common/status"


@asynccontextmanager
async def running(tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
                  replicas: int) -> AsyncIterator[Stack]:
    """Scheduler replicas and the API in-process; the stack's services are stopped at the end.

    A select whose first attempt takes more than half of ``select_timeout_ms`` is asked
    again, and both decisions count; a busy test box must not make that happen here.
    """
    path = write_config(tmp_path / "config.yaml", prefix, [POOL], metrics_ms=60000,
                        log_level="INFO")
    edit_config(path, lambda doc: doc["global"].update(select_timeout_ms=60000))
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw) for _ in range(replicas)]
    services.append(InProcess(serve_api, loaded, port=port, **kw))
    stack = Stack(config_path=path, api_url=f"http://127.0.0.1:{port}",
                  http=httpx.AsyncClient(timeout=90), bus=await Bus.connect(nats_url, prefix),
                  services=services)
    try:
        await wait_until(lambda: _healthy(stack), 15, "API healthy")
        yield stack
    finally:
        for svc in reversed(stack.services):
            await svc.stop()
        await stack.http.aclose()
        await stack.bus.close()


async def _healthy(stack: Stack) -> bool:
    for svc in stack.services:
        if svc.task.done():
            svc.task.result()  # a start-up crash, not a time-out
    return (await stack.http.get(f"{stack.api_url}/health")).status_code == 200


async def publish_pool(bus: Bus) -> None:
    await bus.snapshot("p1", [A, B])
    await bus.metrics("p1", {A: (0, 1, 0.1), B: (1, 1, 0.3)})


async def until_every_replica_scores(stack: Stack) -> None:
    """Simulate (never counted) answers a member on every call: each replica has the pool."""
    async def ready() -> bool:
        await publish_pool(stack.bus)
        for _ in range(20):
            r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/simulate?iterations=1",
                                      json={"pool_name": "p1", "members": [A, B]})
            if r.status_code != 200 or set(r.json()["results"]) - {A, B}:
                return False
        return True

    await wait_until(ready, 15, "every replica to score the pool")


async def select_many(stack: Stack, n: int) -> None:
    for start in range(0, n, 25):
        answers = await asyncio.gather(*(stack.select("p1", [A, B])
                                         for _ in range(min(25, n - start))))
        assert set(answers) <= {A, B}, answers


async def status(stack: Stack) -> dict[str, Any]:
    r = await stack.http.get(stack.api_url + STATUS)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def summary(body: dict[str, Any]) -> tuple[str, int, dict[str, int], int]:
    """Scope, total answers, the answers, and the members' own counts added up."""
    return (body.get("selections_scope", "?"), sum(body["selections"].values()),
            body["selections"], sum(m["selections"] for m in body["members"]))


async def until_stable(stack: Stack, total: int, calls: int = 8, timeout_s: float = 15) -> None:
    """``calls`` status calls in a row all report ``total`` fleet-wide answers."""
    seen: list[tuple[str, int, dict[str, int], int]] = []

    async def stable() -> bool:
        seen.clear()
        for _ in range(calls):
            seen.append(summary(await status(stack)))
        return all(s[0] == "fleet" and s[1] == total and s[3] == total for s in seen)

    try:
        await wait_until(stable, timeout_s, f"{calls} status calls reporting {total}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last calls (scope, total, answers, members): {seen}"
                             ) from None


async def test_status_counts_every_replica_and_survives_a_restart(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.scheduler")
    async with running(tmp_path, nats_url, redis_url, prefix, replicas=2) as stack:
        await until_every_replica_scores(stack)
        await select_many(stack, SELECTS)
        await until_stable(stack, SELECTS)
        # One replica stops (its last answers flushed), a new one starts and joins.
        first = stack.services.pop(0)
        await first.stop()
        newcomer = InProcess(serve_scheduler, load(stack.config_path), nats_url=nats_url,
                             redis_url=redis_url)
        stack.services.insert(0, newcomer)

        async def joined() -> bool:
            if newcomer.task.done():
                newcomer.task.result()
            return sum("serving on" in r.getMessage() for r in caplog.records) == 3

        await wait_until(joined, 15, "the new replica to serve")
        await until_stable(stack, SELECTS)
        # The other original replica stops right after answering: its last answers are
        # flushed on the way out, and the newcomer alone reports what the fleet did.
        await select_many(stack, 99)
        second = stack.services.pop(1)
        await second.stop()
        await until_stable(stack, SELECTS + 99)


async def test_state_store_outage_shows_replica_counts_then_catches_up(
        tmp_path: Path, nats_url: str, prefix: str) -> None:
    valkey = private_valkey().start()
    try:
        async with running(tmp_path, nats_url, valkey.url, prefix, replicas=1) as stack:
            await until_every_replica_scores(stack)
            await select_many(stack, 100)
            await until_stable(stack, 100)
            store = aioredis.Redis.from_url(valkey.url)
            key = RedisKeys(prefix).selections("Common", "p1")

            async def flushed() -> bool:
                stored = await store.hgetall(key)
                return sum(int(n) for n in stored.values()) == 100

            await wait_until(flushed, 10, "the 100 answers to reach Redis")
            await store.aclose()
            valkey.stop()
            await select_many(stack, 50)
            seen: list[object] = []

            async def local_only() -> bool:
                got = summary(await status(stack))
                seen.append(got)
                return got[:2] == ("replica", 150)

            try:
                await wait_until(local_only, 10, "status to say it counts this replica only")
            except AssertionError as err:
                raise AssertionError(f"{err}; seen: {seen[-5:]}") from None
            valkey.start()  # empty (nothing kept on disk): the answers since the outage began
            await until_stable(stack, 50)
    finally:
        valkey.stop()
