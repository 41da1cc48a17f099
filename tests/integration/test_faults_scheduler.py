"""The only scheduler replica overloaded past its queue: 500 selects in flight against it,
and the replica frozen (SIGSTOP) for FREEZE_S while they keep arriving — a CPU-starved
scheduler, the honest version of "overloaded". (A replica killed: test_resilience.py.)

Allowed: a select the scheduler does not answer within the budget gets ``503
scheduler_unavailable`` with ``Retry-After`` (the iRule then uses the pool's own load
balancing) — while frozen, and while the backlog drains after it, until RECOVER_S after
it resumes. Not allowed: any other answer (no 500, no connection error, no ``none``), an
answer later than the budget (+ a busy box's slack: never a hang), members not answered
again after the overload, or the API's memory growing with the backlog (the requests it
holds are bounded by its clients', each waiting at most the budget).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.system import (
    Bus,
    ChildProcess,
    edit_config,
    load,
    wait_until,
    write_config,
)
from tests.integration.timed_traffic import Answer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

A, B = "10.0.0.1:8001", "10.0.0.2:8001"
POOL = {"name": "p1", "engine_type": "vllm", "source": "static", "members": [A, B]}
IN_FLIGHT = 500
BUDGET_S = 2.0
"""The API's select budget (``select_timeout_ms``)."""
SLACK_S = 5.0
"""What a busy 2-core box may add to an answer on top of its budget (not a hang)."""
FREEZE_S = 2.0
RECOVER_S = 10.0
"""After the replica resumes, selects answer members again within this."""
RSS_GROWTH_MB = 150
"""The API's resident memory may grow this much under the flood (sockets, buffers)."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Flood:
    """``clients`` keep-alive connections, each sending the select back to back.

    A bare HTTP/1.1 client on asyncio streams: hundreds of httpx clients would make the
    test process itself the bottleneck, and their own delays would count as latency.
    """

    def __init__(self, port: int, body: bytes, clients: int, timeout_s: float = 30) -> None:
        self.request = (b"POST /scheduler/select HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))
        self.port = port
        self.timeout_s = timeout_s
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(clients)]

    async def _client(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    writer.write(self.request)
                    status, headers, text = await asyncio.wait_for(_response(reader),
                                                                   self.timeout_s)
                    answer = Answer(started, time.monotonic() - started, status, text,
                                    headers.get("retry-after"))
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
                    self.answers.append(Answer(started, time.monotonic() - started, 0,
                                               f"{type(err).__name__}: {err}", None))
                    return
                self.answers.append(answer)
        finally:
            writer.close()

    def count(self, good: Callable[[Answer], bool], since: float = 0.0) -> int:
        return sum(1 for a in self.answers if a.at >= since and good(a))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait(self._tasks, timeout=self.timeout_s + 10)

    def summary(self) -> Counter[str]:
        return Counter(f"{a.status}:{a.code or a.text[:60]}" for a in self.answers)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], str]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body.decode(errors="replace")


def _refused(a: Answer) -> bool:
    return a.status == 503 and a.code == "scheduler_unavailable" and bool(a.retry_after)


async def test_a_frozen_scheduler_under_a_select_flood_answers_each_within_budget(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    # Metrics published once must stay fresh (3 intervals) through the whole test.
    path = write_config(tmp_path / "config.yaml", prefix, [POOL], metrics_ms=60_000,
                        log_level="INFO")
    edit_config(path, lambda doc: doc["global"].update(select_timeout_ms=BUDGET_S * 1000))
    port = load(path).config.global_.api_port
    scheduler = ChildProcess("scheduler", path, nats_url, redis_url, tmp_path)
    api = ChildProcess("api", path, nats_url, redis_url, tmp_path)
    bus = await Bus.connect(nats_url, prefix)
    url = f"http://127.0.0.1:{port}"
    body = {"pool_name": "p1", "members": [A, B]}
    flood: Flood | None = None
    rss: list[float] = []
    resumed = back = baseline = 0.0
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def member() -> bool:
                await bus.snapshot("p1", [A, B])
                await bus.metrics("p1", {A: (0, 1, 0.1), B: (2, 1, 0.5)})
                r = await http.post(f"{url}/scheduler/select", json=body)
                return r.text in (A, B)
            await wait_until(member, 60, "the scheduler knows the pool")
            baseline = rss_mb(api.proc.pid)

            def good(a: Answer) -> bool:
                return a.status == 200 and a.text in (A, B)

            async def sample(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    rss.append(rss_mb(api.proc.pid))
                    await asyncio.sleep(0.2)

            sampling = asyncio.Event()
            sampler = asyncio.create_task(sample(sampling))
            flood = Flood(port, json.dumps(body).encode(), IN_FLIGHT)
            try:
                await wait_until(lambda: _count(flood, good, 0, 2 * IN_FLIGHT), 60,
                                 "the flood answered")
                assert scheduler.proc.pid
                os.kill(scheduler.proc.pid, signal.SIGSTOP)
                await asyncio.sleep(FREEZE_S)  # the overload's length, not an assertion
                os.kill(scheduler.proc.pid, signal.SIGCONT)
                resumed = time.monotonic()
                await wait_until(lambda: _count(flood, good, resumed, 1), RECOVER_S + SLACK_S,
                                 "a member answered after the replica resumed")
                back = time.monotonic() - resumed
                calm = resumed + RECOVER_S
                await wait_until(lambda: _count(flood, good, calm, 2 * IN_FLIGHT), 60,
                                 "members answered well after the overload")
            finally:
                os.kill(scheduler.proc.pid, signal.SIGCONT)
                await flood.stop()
                sampling.set()
                await sampler
            # Calm again: every select answers a member.
            for _ in range(50):
                r = await http.post(f"{url}/scheduler/select", json=body)
                assert r.status_code == 200 and r.text in (A, B), r.text
    finally:
        if flood is not None:
            await flood.stop()
        api.terminate()
        scheduler.terminate()
        await bus.close()
    assert flood is not None
    answers = flood.answers
    seen = (f"{len(answers)} selects, {len(rss)} RSS samples: baseline {baseline:.0f} MB, "
            f"peak {max(rss):.0f} MB; slowest answer {max(a.took for a in answers):.2f}s; "
            f"members again {back:.2f}s after the resume; answers: "
            f"{flood.summary().most_common(6)}")
    print(seen)
    wrong = [a for a in answers if not (good(a) or _refused(a))]
    assert not wrong, f"{len(wrong)} selects answered neither a member nor the fallback: " \
                      f"{wrong[:5]}; {seen}"
    slow = [a for a in answers if a.took > BUDGET_S + SLACK_S]
    assert not slow, f"{len(slow)} selects answered past the budget: {slow[:5]}; {seen}"
    refused = [a for a in answers if _refused(a)]
    assert refused, f"the freeze cost no select its budget: not an overload; {seen}"
    late = [a for a in refused if a.at > resumed + RECOVER_S]
    assert not late, f"{len(late)} selects refused after the recovery bound: {late[:5]}; {seen}"
    assert max(rss) - baseline <= RSS_GROWTH_MB, seen


async def _count(traffic: Flood, good: Callable[[Answer], bool], since: float,
                 n: int) -> bool:
    return traffic.count(good, since) >= n
