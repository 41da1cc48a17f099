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

The same freeze with a small ``scheduler.pending_msgs_limit`` and a backlog of events larger
than it: the replica's slow-consumer drops, counted, logged in a few lines, survived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from shared.http_server import free_port
from shared.routing import SelectionEvent
from shared.slow_consumer import REPORT_EVERY_S
from tests.integration.promtext import scrape
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
PENDING_LIMIT = 50
"""``scheduler.pending_msgs_limit`` of the slow-consumer test."""
EVENT_FLOOD = 3000
"""Selection events published while the replica is frozen: 60 times that limit."""
MAX_DROP_LINES = 5
DROPPED = "llmsched_nats_dropped_messages_total"


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


@dataclass
class Overload:
    """One freeze of the replica under the flood: every answer, the API's memory, timings."""

    flood: Flood
    rss: list[float]
    baseline: float
    resumed: float
    back: float

    def seen(self) -> str:
        answers = self.flood.answers
        return (f"{len(answers)} selects, {len(self.rss)} RSS samples: baseline "
                f"{self.baseline:.0f} MB, peak {max(self.rss):.0f} MB; slowest answer "
                f"{max(a.took for a in answers):.2f}s; members again {self.back:.2f}s after "
                f"the resume; answers: {self.flood.summary().most_common(6)}")

    def check(self) -> None:
        """A member or the fallback for every select, within its budget; refusals only
        until RECOVER_S after the resume; the API's memory flat."""
        answers, seen = self.flood.answers, self.seen()
        print(seen)
        wrong = [a for a in answers if not (_member(a) or _refused(a))]
        assert not wrong, f"{len(wrong)} selects answered neither a member nor the " \
                          f"fallback: {wrong[:5]}; {seen}"
        slow = [a for a in answers if a.took > BUDGET_S + SLACK_S]
        assert not slow, f"{len(slow)} selects answered past the budget: {slow[:5]}; {seen}"
        refused = [a for a in answers if _refused(a)]
        assert refused, f"the freeze cost no select its budget: not an overload; {seen}"
        late = [a for a in refused if a.at > self.resumed + RECOVER_S]
        assert not late, f"{len(late)} selects refused after the recovery bound: " \
                         f"{late[:5]}; {seen}"
        assert max(self.rss) - self.baseline <= RSS_GROWTH_MB, seen


def _config(tmp_path: Path, prefix: str, scheduler: dict[str, Any] | None = None,
            extra: dict[str, Any] | None = None) -> Path:
    # Metrics published once must stay fresh (3 intervals) through the whole test.
    path = write_config(tmp_path / "config.yaml", prefix, [POOL], metrics_ms=60_000,
                        log_level="INFO", extra=extra)

    def change(doc: dict[str, Any]) -> None:
        doc["global"]["select_timeout_ms"] = BUDGET_S * 1000
        doc["scheduler"].update(scheduler or {})

    edit_config(path, change)
    return path


async def _freeze_under_flood(scheduler: ChildProcess, api: ChildProcess, bus: Bus, port: int,
                              while_frozen: Callable[[], Awaitable[None]] | None = None
                              ) -> Overload:
    """IN_FLIGHT selects in flight; the replica frozen FREEZE_S (``while_frozen`` runs
    meanwhile), resumed, and the flood kept on until well after the recovery bound."""
    url = f"http://127.0.0.1:{port}"
    body = {"pool_name": "p1", "members": [A, B]}
    rss: list[float] = []
    async with httpx.AsyncClient(timeout=5) as http:
        async def member() -> bool:
            await bus.snapshot("p1", [A, B])
            await bus.metrics("p1", {A: (0, 1, 0.1), B: (2, 1, 0.5)})
            r = await http.post(f"{url}/scheduler/select", json=body)
            return r.text in (A, B)
        await wait_until(member, 60, "the scheduler knows the pool")
        baseline = rss_mb(api.proc.pid)

        async def sample(stop: asyncio.Event) -> None:
            while not stop.is_set():
                rss.append(rss_mb(api.proc.pid))
                await asyncio.sleep(0.2)

        sampling = asyncio.Event()
        sampler = asyncio.create_task(sample(sampling))
        flood = Flood(port, json.dumps(body).encode(), IN_FLIGHT)
        try:
            await wait_until(lambda: _count(flood, _member, 0, 2 * IN_FLIGHT), 60,
                             "the flood answered")
            assert scheduler.proc.pid
            os.kill(scheduler.proc.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            if while_frozen is not None:
                await while_frozen()
            # The overload's length, not an assertion.
            await asyncio.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen)))
            os.kill(scheduler.proc.pid, signal.SIGCONT)
            resumed = time.monotonic()
            await wait_until(lambda: _count(flood, _member, resumed, 1), RECOVER_S + SLACK_S,
                             "a member answered after the replica resumed")
            back = time.monotonic() - resumed
            calm = resumed + RECOVER_S
            await wait_until(lambda: _count(flood, _member, calm, 2 * IN_FLIGHT), 60,
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
    return Overload(flood, rss, baseline, resumed, back)


async def test_a_frozen_scheduler_under_a_select_flood_answers_each_within_budget(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    path = _config(tmp_path, prefix)
    port = load(path).config.global_.api_port
    scheduler = ChildProcess("scheduler", path, nats_url, redis_url, tmp_path)
    api = ChildProcess("api", path, nats_url, redis_url, tmp_path)
    bus = await Bus.connect(nats_url, prefix)
    try:
        overload = await _freeze_under_flood(scheduler, api, bus, port)
    finally:
        api.terminate()
        scheduler.terminate()
        await bus.close()
    overload.check()


async def test_a_replica_reading_a_backlog_past_its_pending_limit_drops_and_says_so_briefly(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    """The replica's subscriptions past their pending limits (slow-consumer drops).

    The mechanism: nats-py's read loop parses every message of what it read from the socket
    (32 KB a read, and it reads on while the socket holds more) and queues each on its
    subscription without letting the subscription's callback task run in between; a
    subscription whose queue already holds ``pending_msgs_limit`` messages has the next
    ones dropped, each reported to the error callback as a ``SlowConsumerError``. A
    replica frozen while EVENT_FLOOD selection events (one message each, as another
    replica's or the gateway's would come) are published on ``<prefix>.selection`` finds
    them all in its socket when it resumes, and reads them far faster than its callback
    takes them: with ``scheduler.pending_msgs_limit`` = PENDING_LIMIT most are dropped.
    The selects sent meanwhile wait on the micro endpoint's subscription, which keeps
    nats-py's default limit (``add_endpoint`` takes none): they are answered, or refused
    by the API's budget, as in the test above.

    Allowed: what the frozen replica costs (above); the dropped events themselves (a
    dropped selection only costs this replica's in-flight count of that request).
    Asserted besides: the drops counted in ``llmsched_nats_dropped_messages_total`` on the
    subscription's subject; at most MAX_DROP_LINES log lines about them, accounting for
    every one; the replica alive and answering members after the recovery bound.
    """
    metrics_port = free_port()
    path = _config(tmp_path, prefix, {"pending_msgs_limit": PENDING_LIMIT},
                   {"metrics": {"host": "127.0.0.1", "scheduler_port": metrics_port}})
    port = load(path).config.global_.api_port
    scheduler = ChildProcess("scheduler", path, nats_url, redis_url, tmp_path)
    api = ChildProcess("api", path, nats_url, redis_url, tmp_path)
    bus = await Bus.connect(nats_url, prefix)
    subject = bus.subjects.selection
    encode = msgspec.json.Encoder().encode

    async def publish_events() -> None:
        event = SelectionEvent(request_id="flood", pool="flood", partition="Common",
                               member="10.9.9.9:1", replica="test", at=time.time(), ttl_s=1.0)
        for _ in range(EVENT_FLOOD):  # one request id: the replica's counts stay flat
            await bus.nc.publish(subject, encode(event))
        await bus.nc.flush()

    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    dropped = logged = 0
    lines: list[str] = []
    alive = False
    try:
        overload = await _freeze_under_flood(scheduler, api, bus, port, publish_events)
        async with httpx.AsyncClient(timeout=5) as http:
            async def all_logged() -> bool:
                nonlocal dropped, logged, lines
                exported = await scrape(http, metrics_url)
                dropped = int(exported.value(DROPPED, subject=subject))
                lines = [line for line in scheduler.log().splitlines()
                         if "NATS slow consumer" in line]
                logged = _logged_drops(lines)
                return dropped > 0 and logged == dropped
            # The last line about a burst comes at most REPORT_EVERY_S after the one before.
            with contextlib.suppress(AssertionError):
                await wait_until(all_logged, REPORT_EVERY_S + SLACK_S,
                                 "every drop counted and logged")
            total = (await scrape(http, metrics_url)).value(DROPPED)
        alive = scheduler.proc.poll() is None
    finally:
        api.terminate()
        scheduler.terminate()
        await bus.close()
    seen = (f"{dropped} of {EVENT_FLOOD} selection events dropped on {subject} "
            f"({total:.0f} on every subscription), {logged} of them in {len(lines)} log "
            f"line(s): {lines}")
    print(seen)
    assert dropped > 0, f"no drop: the backlog fitted the pending limit; {seen}"
    assert total == dropped, f"drops on other subscriptions than {subject}: {seen}"
    assert len(lines) <= MAX_DROP_LINES, f"drops logged in too many lines; {seen}"
    assert logged == dropped, f"the log does not account for every drop; {seen}"
    generic = [line for line in scheduler.log().splitlines()
               if "NATS error" in line and "slow consumer" in line]
    assert not generic, f"{len(generic)} drops logged one by one: {generic[:3]}"
    assert alive, f"the replica died: {scheduler.log()[-2000:]}"
    overload.check()


def _logged_drops(lines: list[str]) -> int:
    """Drops the log lines account for: 1 per first line, N per "N more message(s)"."""
    total = 0
    for line in lines:
        more = re.search(r"(\d+) more message\(s\) dropped", line)
        total += int(more.group(1)) if more else 1
    return total


def _member(a: Answer) -> bool:
    return a.status == 200 and a.text in (A, B)


async def _count(traffic: Flood, good: Callable[[Answer], bool], since: float,
                 n: int) -> bool:
    return traffic.count(good, since) >= n
