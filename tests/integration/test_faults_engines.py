"""Engines and workers that die under traffic. (An engine killed before its answers'
first bytes: test_gateway_faults.py; a worker that only goes silent: test_worker.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from shared.http_server import free_port
from shared.routing import OutcomeEvent
from shared.subjects import Subjects
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.system import REPO, wait_until
from tests.integration.timed_traffic import TimedTraffic, chat_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LOST_AFTER_S = 2.0
"""``worker_lost_after_s`` of the worker test."""
SLACK_S = 5.0
"""What a busy 2-core box may add to a bound (the detector's check interval included)."""


@pytest.fixture
async def outcomes(nats_url: str, prefix: str) -> AsyncIterator[list[OutcomeEvent]]:
    """Every ``request.outcome`` event of the test."""
    seen: list[OutcomeEvent] = []
    decoder = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent])  # one, or a batch
    nc = await nats.connect(nats_url)

    async def collect(msg: Msg) -> None:
        got = decoder.decode(msg.data)
        seen.extend(got if isinstance(got, list) else [got])

    await nc.subscribe(Subjects(prefix).request_outcome, cb=collect)
    yield seen
    await nc.drain()


async def _instances(http: httpx.AsyncClient, worker_url: str) -> list[dict[str, Any]]:
    r = await http.get(f"{worker_url}/instances")
    assert r.status_code == 200, r.text
    body = r.json()
    listing: list[dict[str, Any]] = body["instances"] if isinstance(body, dict) else body
    return listing


async def test_an_engine_dying_mid_stream_cuts_that_stream_only_and_says_so(
        make_fleet: MakeFleet, outcomes: list[OutcomeEvent]) -> None:
    """Allowed: the stream the dead engine was sending ends cut: the gateway closes the
    connection without ending the chunked body (no ``[DONE]``, no SSE error event), so the
    client's read fails; bytes already sent cannot be taken back, so it is not retried;
    its ``request.outcome`` says ``stream broken``. Not allowed: that request tried again
    elsewhere, or any other request failing: the ones that follow go to the other
    instance."""
    fleet = await make_fleet(autoscaling={"min_replicas": 2, "max_replicas": 2,
                                          "down_after_s": 600})
    # Simulated engines as child processes, generating token by token (a long answer is
    # still streaming when its engine is killed).
    await fleet.register({"alias": "sim-model", "model_name": "llama-sim", "engine": "vllm",
                          "speed": 0.2, "engine_backend": "sim-process"})
    await fleet.wait_states("sim-model", lambda s: list(s.values()) == ["ACTIVE", "ACTIVE"],
                            90, "two ACTIVE engine processes")
    listing = await _instances(fleet.http, fleet.workers[0].url)
    pids = {f"127.0.0.1:{i['port']}": int(i["pid"]) for i in listing if i.get("pid")}
    assert len(pids) == 2, listing
    # Both in the scheduler's pool (not only ACTIVE on their worker): the traffic that
    # follows has somewhere to go when one of them dies.
    members: list[list[str]] = []

    async def both_routable() -> bool:
        members.append(await _members(fleet, "sim-model"))
        return members[-1] == sorted(pids)
    try:
        await wait_until(both_routable, 30, "both instances routable")
    except AssertionError as err:
        raise AssertionError(f"{err}; members seen: {members[-3:]}, wanted {sorted(pids)}"
                             ) from None
    others = TimedTraffic(chat_sender(fleet.api, "sim-model"), concurrency=2)
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2000, "stream": True}
    received = bytearray()
    cut: Exception | None = None
    killed = ""
    at = ended = 0.0
    try:
        async with httpx.AsyncClient(timeout=60) as http, \
                http.stream("POST", f"{fleet.api}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            chunks = resp.aiter_bytes()
            async for chunk in chunks:
                received += chunk
                if received.count(b"data: ") >= 3:
                    break  # the stream has really started: tokens relayed
            # Its engine is the one running a request (nothing else runs yet).
            killed = await _running(http, list(pids))
            others.start()
            await wait_until(lambda: _served(others, 0, 5), 60, "other traffic flowing")
            os.kill(pids[killed], signal.SIGKILL)
            at = time.monotonic()
            try:
                async for chunk in chunks:
                    received += chunk
            except httpx.HTTPError as err:
                cut = err
        ended = time.monotonic()
        await wait_until(lambda: _served(others, ended, 20), 60,
                         "other requests served after the kill")
    finally:
        await others.stop()
    text = received.decode(errors="replace")
    seen = f"cut by {cut!r} {ended - at:.2f}s after the kill; received {text[-300:]!r}"
    print(seen)
    assert b"data: " in received, seen
    assert cut is not None and b"[DONE]" not in received, f"the stream was not cut: {seen}"

    def broken() -> list[OutcomeEvent]:
        return [o for o in outcomes if o.error and o.error.startswith("stream broken")]

    async def reported() -> bool:
        return bool(broken())
    try:
        await wait_until(reported, 15, "the cut stream's outcome event")
    except AssertionError as err:
        raise AssertionError(f"{err}; outcomes: {outcomes[-10:]}; {seen}") from None
    events = broken()
    assert len(events) == 1, events
    event = events[0]
    assert event.final and event.stream and event.retries == 0 and event.status == 200, event
    base = event.request_id.rsplit("-", 1)[0]
    attempts = [o for o in outcomes if o.request_id.rsplit("-", 1)[0] == base]
    assert attempts == [event], f"the cut stream was tried again: {attempts}"
    assert event.member == killed, (event, killed)
    wrong = [a for a in others.answers if a.status != 200]
    assert not wrong, f"{len(wrong)} of {len(others.answers)} other requests failed: " \
                      f"{wrong[:5]}; {seen}"


async def _running(http: httpx.AsyncClient, members: list[str]) -> str:
    """The one member whose engine runs a request (its own /metrics say)."""
    running: dict[str, float] = {}
    for member in members:
        r = await http.get(f"http://{member}/metrics")
        for line in r.text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                running[member] = float(line.rsplit(" ", 1)[1])
    busy = [m for m, n in running.items() if n >= 1]
    assert len(busy) == 1, f"not one engine running the stream: {running}"
    return busy[0]


async def _served(traffic: TimedTraffic, since: float, n: int) -> bool:
    return traffic.count(lambda a: a.status == 200, since) >= n


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[[str, str], WorkerProcess]]:
    """``start(worker_id, api_url)``: ``python -m services worker`` as a child process."""
    started: list[WorkerProcess] = []

    def start(worker_id: str, api: str) -> WorkerProcess:
        port = free_port()
        log = tmp_path / f"{worker_id}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services", "worker", "--port", str(port),
                 "--manager-url", api, "--worker-id", worker_id, "--heartbeat-interval",
                 "0.2", "--log-dir", str(tmp_path / f"logs-{worker_id}")],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        started.append(WorkerProcess(proc, f"http://127.0.0.1:{port}", log))
        return started[-1]

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(10)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


async def _members(fleet: Fleet, alias: str = "fake-model") -> list[str]:
    """The alias's pool members the scheduler may route to now."""
    r = await fleet.http.get(f"{fleet.api}/pools/{alias}/@models/status")
    if r.status_code != 200:
        return []
    return sorted(m["key"] for m in r.json()["members"] if m["available"])


async def test_a_worker_process_killed_costs_only_the_requests_on_its_engines(
        make_fleet: MakeFleet, worker_process: Callable[[str, str], WorkerProcess],
        outcomes: list[OutcomeEvent]) -> None:
    """A worker process running two of an alias's three instances is SIGKILLed (its
    simulated engines live in it and die with it) while gateway requests run.

    Allowed: the requests in flight on its engines when it dies fail (``502
    upstream_failed`` once no other instance is left to try), and its instances stay
    routable until the registry marks it lost, which it must within
    ``worker_lost_after_s`` (+ the detector's interval and a busy box's slack). Not
    allowed: a request started after the kill failing (a refused connection before the
    first byte is tried again on another instance), the instances staying in the pool
    after the worker is lost, or the other worker's instance leaving it."""
    fleet = await make_fleet(worker=False, autoscalers=0,
                             global_={"worker_lost_after_s": LOST_AFTER_S,
                                      "select_timeout_ms": 3000})
    spec = {**FAKE, "fake_delay_ms": 300, "fake_capacity": 8}
    await fleet.register(spec)
    doomed = worker_process("w-proc", fleet.api)
    survivor = await fleet.add_worker("w1")

    async def started(url: str, name: str) -> None:
        async def up() -> bool:
            r = await fleet.http.post(f"{url}/instances/start", json={**spec, "instance": name})
            assert r.status_code in (200, 201, 409), r.text
            return True
        await wait_until(up, 60, f"{name} started on {url}")

    await started(doomed.url, "fake-model-p1")
    await started(doomed.url, "fake-model-p2")
    await started(survivor.url, "fake-model-w1")
    dead = sorted(f"127.0.0.1:{i['port']}" for i in await _instances(fleet.http, doomed.url))
    alive = [f"127.0.0.1:{i['port']}" for i in await _instances(fleet.http, survivor.url)]
    assert len(dead) == 2 and len(alive) == 1, (dead, alive)

    async def pooled() -> bool:
        return await _members(fleet) == sorted(dead + alive)
    await wait_until(pooled, 60, "the three instances in the alias's pool")
    traffic = TimedTraffic(chat_sender(fleet.api, "fake-model"), concurrency=6).start()
    try:
        await wait_until(lambda: _served(traffic, 0, 30), 60, "traffic flowing")
        doomed.proc.kill()
        killed = time.monotonic()
        doomed.proc.wait(10)

        async def lost() -> bool:
            r = await fleet.http.get(f"{fleet.api}/admin/workers")
            return any(w["worker_id"] == "w-proc" and w["state"] == "lost"
                       for w in r.json()["workers"])
        await wait_until(lost, LOST_AFTER_S + SLACK_S + 10, "w-proc marked lost")
        lost_after = time.monotonic() - killed

        async def left() -> bool:
            return await _members(fleet) == alive
        await wait_until(left, SLACK_S + 10, "its instances out of the pool")
        left_after = time.monotonic() - killed
        out = time.monotonic()
        await wait_until(lambda: _served(traffic, out, 30), 60,
                         "traffic served by the other worker")
    finally:
        await traffic.stop()
    in_flight = [a for a in traffic.answers if a.at < killed < a.at + a.took]
    failed = [a for a in traffic.answers if a.status != 200]
    retried = [o for o in outcomes if o.final and o.status == 200 and o.retries > 0]
    seen = (f"lost after {lost_after:.1f}s, out of the pool after {left_after:.1f}s; "
            f"{len(in_flight)} in flight at the kill; {len(retried)} served after a retry; "
            f"answers: {traffic.summary().most_common(6)}; failed: {failed[:5]}")
    print(seen)
    assert lost_after <= LOST_AFTER_S + SLACK_S, seen
    wrong = [a for a in failed if not (a.at < killed and a.status == 502
                                       and a.code == "upstream_failed")]
    assert not wrong, f"{len(wrong)} requests failed that could have been served; {seen}"
    assert retried, f"no request was tried again elsewhere; {seen}"
