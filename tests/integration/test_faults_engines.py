"""Engines and workers that die under traffic. (An engine killed before its answers'
first bytes: test_gateway_faults.py; a worker that only goes silent: test_worker.py.)"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from shared.routing import OutcomeEvent
from shared.subjects import Subjects
from tests.integration.fleet import MakeFleet
from tests.integration.system import wait_until
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
