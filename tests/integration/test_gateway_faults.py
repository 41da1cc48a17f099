"""Gateway faults: an engine killed mid-traffic, a client that goes away, outcome events."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import msgspec
import nats
import pytest

from shared.routing import OutcomeEvent
from shared.subjects import Subjects
from tests.integration.fleet import FAKE, MakeFleet
from tests.integration.load_helpers import Traffic
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration


async def _instances(http: httpx.AsyncClient, worker_url: str) -> list[dict[str, Any]]:
    r = await http.get(f"{worker_url}/instances")
    assert r.status_code == 200, r.text
    body = r.json()
    listing: list[dict[str, Any]] = body["instances"] if isinstance(body, dict) else body
    return listing


async def test_an_engine_killed_mid_traffic_costs_no_request_before_its_first_byte(
        make_fleet: MakeFleet) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 2, "max_replicas": 2,
                                          "down_after_s": 600})
    spec = {**FAKE, "fake_delay_ms": 300, "fake_capacity": 8, "engine_backend": "sim-process"}
    await fleet.register(spec)
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE", "ACTIVE"],
                            90, "two ACTIVE engine processes")
    traffic = Traffic(fleet.api, "fake-model", concurrency=6).start()
    try:
        await wait_until(lambda: _count(traffic, 20), 60, "traffic flowing")
        victim = (await _instances(fleet.http, fleet.workers[0].url))[0]
        assert victim.get("pid"), victim
        os.kill(int(victim["pid"]), signal.SIGKILL)
        served = traffic.ok
        await wait_until(lambda: _count(traffic, served + 40), 60,
                         "traffic served by the surviving engine")
    finally:
        await traffic.stop()
    assert not traffic.failures, (f"{len(traffic.failures)} of {len(traffic.results)} failed",
                                  traffic.failures[:5])


async def _count(traffic: Traffic, n: int) -> bool:
    return traffic.ok >= n


async def test_outcome_events_report_each_request_and_a_client_disconnect_cancels_upstream(
        make_fleet: MakeFleet, nats_url: str, prefix: str) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 1})
    # A simulated engine (not a fake one): it generates token by token, so a long answer
    # is still streaming when the client leaves.
    await fleet.register({"alias": "sim-model", "model_name": "llama-sim", "engine": "vllm",
                          "speed": 0.2})
    await fleet.wait_states("sim-model", lambda s: "ACTIVE" in s.values(), 30, "one ACTIVE")
    nc = await nats.connect(nats_url)
    outcomes: list[OutcomeEvent] = []
    decoder = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent])  # one, or a batch

    async def collect(msg: Any) -> None:
        got = decoder.decode(msg.data)
        outcomes.extend(got if isinstance(got, list) else [got])

    await nc.subscribe(Subjects(prefix).request_outcome, cb=collect)
    try:
        r = await fleet.http.post(f"{fleet.api}/v1/chat/completions", json={
            "model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5})
        assert r.status_code == 200, r.text

        async def reported() -> bool:
            return any(o.final and o.status == 200 for o in outcomes)
        await wait_until(reported, 10, "an outcome event")
        done = next(o for o in outcomes if o.final and o.status == 200)
        assert done.alias == "sim-model" and done.member and done.retries == 0, done
        assert done.ttft_s is not None and done.e2e_s is not None and done.e2e_s >= done.ttft_s
        assert done.prompt_tokens and done.completion_tokens, done

        # A long stream the client abandons: the gateway cancels it upstream and says so.
        slow = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 400, "stream": True}
        async with httpx.AsyncClient(timeout=30) as http, \
                http.stream("POST", f"{fleet.api}/v1/chat/completions", json=slow) as resp:
            assert resp.status_code == 200
            async for _chunk in resp.aiter_bytes():
                break  # first chunk seen; leave

        async def cancelled() -> bool:
            return any(o.error == "client disconnected" for o in outcomes)
        try:
            await wait_until(cancelled, 15, "the abandoned stream reported as cancelled")
        except AssertionError as err:
            raise AssertionError(f"{err}; outcomes: {outcomes}") from None

        async def nothing_in_flight() -> bool:
            status = await fleet.status("sim-model")
            return status["inflight"] == 0
        await wait_until(nothing_in_flight, 15, "in-flight count back to 0 after the cancel")
    finally:
        await nc.drain()


async def test_max_ongoing_requests_bounds_one_api_process(make_fleet: MakeFleet) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 1},
                             gateway={"max_ongoing_requests": 2})
    await fleet.register({**FAKE, "fake_delay_ms": 1500, "fake_capacity": 8})
    await fleet.wait_states("fake-model", lambda s: "ACTIVE" in s.values(), 30, "one ACTIVE")
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=30) as http:
        results = await asyncio.gather(*(http.post(f"{fleet.api}/v1/chat/completions",
                                                   json=body) for _ in range(4)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 429, 429], [(r.status_code, r.text[:200]) for r in results]
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers.get("retry-after"), refused.headers
    assert refused.json()["error"]["type"] == "rate_limit_error", refused.text
