"""The collector's read of sleeping worker instances: real Redis, cached, absent when down."""

from __future__ import annotations

import logging

import pytest

from services.collector.workers_source import SleepingInstances
from shared.workers import InstanceSummary, RegisterRequest, WorkerRegistry
from tests.servers import private_valkey

pytestmark = pytest.mark.integration


def instance(alias: str, url: str, state: str) -> InstanceSummary:
    return InstanceSummary(alias=alias, model_alias="chat", url=url, state=state)


async def test_sleeping_instances_by_address(redis_url: str, prefix: str) -> None:
    registry = WorkerRegistry(redis_url, prefix=prefix)
    try:
        await registry.register(RegisterRequest(
            worker_id="w1", worker_url="http://10.0.0.5:8100", instances=[
                instance("chat", "http://10.0.0.5:9001", "sleeping"),
                instance("chat-r2", "http://10.0.0.5:9002", "running"),
                instance("chat-r3", "http://[fd00::5]:9003", "sleeping"),
                instance("chat-r4", "", "sleeping")]))
        sleeping = SleepingInstances(registry)
        assert sleeping.current() == {}, "nothing is known before the first read"
        await sleeping.refresh()
        assert dict(sleeping.current()) == {
            "10.0.0.5:9001": "worker w1 reports instance chat sleeping",
            "[fd00::5]:9003": "worker w1 reports instance chat-r3 sleeping"}
    finally:
        await registry.close()


async def test_registry_down_means_no_signal_logged_once(
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    valkey = private_valkey().start()
    registry = WorkerRegistry(valkey.url, prefix=prefix)
    clock = [0.0]
    sleeping = SleepingInstances(registry, clock=lambda: clock[0])
    register = RegisterRequest(worker_id="w1", worker_url="http://10.0.0.5:8100",
                               instances=[instance("chat", "http://10.0.0.5:9001", "sleeping")])
    try:
        await registry.register(register)
        await sleeping.refresh()
        valkey.stop()
        with caplog.at_level(logging.INFO, logger="llmsched.collector.workers"):
            for _ in range(3):
                await sleeping.refresh()
            assert list(sleeping.current()) == ["10.0.0.5:9001"], "a recent read still counts"
            clock[0] = 60.0
            assert sleeping.current() == {}, "an old read is dropped: no signal, not stale news"
            valkey.start()
            await registry.register(register)  # the worker's next heartbeat
            await sleeping.refresh()
        assert list(sleeping.current()) == ["10.0.0.5:9001"]
    finally:
        await registry.close()
        valkey.stop()
    # Only the collector's lines: the registry logs each registration too (at INFO when an
    # earlier test in the process set the llmsched level so).
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name == "llmsched.collector.workers"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "unreachable" in lines[0][1] and "reachable again" in lines[1][1], lines
