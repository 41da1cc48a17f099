"""``POST /scheduler/outcome`` through the real API and scheduler (real NATS/Redis).

The F5 iRule reports how each request it sent to a member ended; the API publishes an
``OutcomeEvent`` without a request id, which takes the member's oldest in-flight select
on every scheduler replica of a greybox pool. A failure ends it at once; a success (sent
at the engine's response headers) keeps it counted until a scrape of the member taken
after the report, and teaches the TTFT predictor only when it says it timed the first
token.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from services.api.main import serve as serve_api
from shared.embedded import nats_server
from shared.routing import OutcomeEvent
from tests.integration.conftest import Stack, StackFactory
from tests.integration.system import InProcess, load, wait_until, write_config

pytestmark = pytest.mark.integration

A, B, C, D = "10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001", "10.0.0.4:8001"
IDLE = (0.0, 0.0, 0.1)
"""A scrape's (waiting, running, KV usage) of an idle engine."""
GREYBOX = {"name": "gb", "type": "greybox", "greybox": {"max_inflight": 1}}
"""One request in flight per member: a second select of the same member is refused."""
WAIT_S = 30.0
"""Deadline for what travels over the bus (a busy machine is slow, a correct one is not)."""


def greybox_pool(members: list[str]) -> dict[str, object]:
    return {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
            "mode": "gb", "members": members}


async def greybox_stack(make_stack: StackFactory, members: list[str]) -> Stack:
    """A greybox pool with a membership (no metrics: greybox routes on in-flight counts)."""
    stack: Stack = await make_stack([greybox_pool(members)], extra={"modes": [GREYBOX]})
    await stack.bus.snapshot("p1", members)
    await stack.wait_select("p1", members[:1], members[0], timeout_s=WAIT_S)
    await report(stack, members[0])  # that select is in flight: finish it
    await wait_inflight(stack, {m: 0 for m in members}, scrape=True)
    return stack


async def report(stack: Stack, member: str, **fields: Any) -> httpx.Response:
    body = {"pool_name": "p1", "partition": "Common", "member": member, "status": 200,
            **fields}
    r = await stack.http.post(f"{stack.api_url}/scheduler/outcome", json=body)
    assert r.status_code == 202, (r.status_code, r.headers, r.text)
    assert r.content == b"", r.content
    return r


async def inflight(stack: Stack) -> dict[str, int]:
    r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
    assert r.status_code == 200, r.text
    return {m["key"]: m["inflight"] for m in r.json()["members"]}


async def wait_inflight(stack: Stack, expect: dict[str, int], *, scrape: bool = False) -> None:
    """Poll until the pool's in-flight counts are ``expect``; ``scrape``: publish a scrape of
    every member (idle) at each poll, as the collector would."""
    seen: list[dict[str, int]] = []

    async def check() -> bool:
        if scrape:
            await stack.bus.metrics("p1", dict.fromkeys(expect, IDLE))
        seen.append(await inflight(stack))
        return seen[-1] == expect

    try:
        await wait_until(check, WAIT_S, f"in flight {expect}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen {seen[-1:]}") from None


async def test_outcome_report_finishes_the_members_select(make_stack: StackFactory) -> None:
    stack = await greybox_stack(make_stack, [A, B])
    chosen = await stack.select("p1", [A, B])
    assert chosen in (A, B), chosen
    await wait_inflight(stack, {A: int(chosen == A), B: int(chosen == B)})

    events: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(msg.data)

    sub = await stack.bus.nc.subscribe(stack.bus.subjects.request_outcome, cb=on_event)
    await stack.bus.nc.flush()
    before = time.time()
    await report(stack, chosen, ttft_ms=182.5, e2e_ms=2400)
    after = time.time()
    raw = await asyncio.wait_for(events.get(), WAIT_S)
    await sub.unsubscribe()
    event = msgspec.json.decode(raw, type=OutcomeEvent)
    assert (event.request_id, event.pool, event.partition, event.member, event.status,
            event.final) == ("", "p1", "Common", chosen, 200, True), event
    assert event.ttft_s == pytest.approx(0.1825) and event.e2e_s == pytest.approx(2.4), event
    assert before <= event.at <= after, (before, event.at, after)
    assert event.ttft_at == "headers", event  # the shipped iRule's default

    await wait_inflight(stack, {A: 0, B: 0}, scrape=True)


async def test_busy_until_an_outcome_frees_a_member(make_stack: StackFactory) -> None:
    stack = await greybox_stack(make_stack, [A, B])
    first = await stack.select("p1", [A, B])
    second = await stack.select("p1", [A, B])
    assert {first, second} == {A, B}, (first, second)
    assert await stack.select("p1", [A, B]) == "busy"
    # A failed request (status 0) also finishes the select.
    await report(stack, second, status=0)
    await stack.wait_select("p1", [A, B], second, timeout_s=WAIT_S)
    assert await stack.select("p1", [A, B]) == "busy"


async def test_header_reports_hold_the_select_until_a_scrape(make_stack: StackFactory) -> None:
    """Selects reported at once (a streaming engine's headers) still count on every replica
    until the members are scraped: with one slot per member, four selects take the four
    members and the fifth is busy, however fast the reports came; the scrape frees them.
    A header time never teaches the predictor; a first-token report does."""
    members = [A, B, C, D]
    # Scrapes every 10 s (the test publishes its own): a reported select waits that long
    # for one before it leaves anyway, so nothing but the test's scrape ends it.
    stack: Stack = await make_stack([greybox_pool(members)], replicas=2, metrics_ms=10_000,
                                    extra={"modes": [GREYBOX]})
    await stack.bus.snapshot("p1", members)
    await stack.bus.metrics("p1", dict.fromkeys(members, IDLE))
    await stack.wait_select("p1", members[:1], A, timeout_s=WAIT_S)
    await report(stack, A)
    await wait_inflight(stack, dict.fromkeys(members, 0), scrape=True)

    events: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(msg.data)

    sub = await stack.bus.nc.subscribe(stack.bus.subjects.request_outcome, cb=on_event)
    await stack.bus.nc.flush()
    picks = []
    for _ in members:
        picks.append(await stack.select("p1", members))
        await report(stack, picks[-1], ttft_ms=3)  # the headers came at once
    assert sorted(picks) == members, picks
    for _ in members:
        await asyncio.wait_for(events.get(), WAIT_S)
    await sub.unsubscribe()
    # Every replica counts all four (status answers come from either), none is free.
    for _ in range(6):
        assert await inflight(stack) == dict.fromkeys(members, 1)
        assert await stack.select("p1", members) == "busy"

    await wait_inflight(stack, dict.fromkeys(members, 0), scrape=True)
    chosen = await stack.select("p1", members)
    assert chosen in members, chosen
    status = (await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")).json()
    learned = {m["key"]: m["greybox"]["model"]["samples"] for m in status["members"]}
    assert learned == dict.fromkeys(members, 0), f"header times taught the predictor: {learned}"

    await report(stack, chosen, ttft_ms=250, ttft_at="first_token")

    async def taught() -> bool:
        status = (await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")).json()
        model = next(m["greybox"]["model"] for m in status["members"] if m["key"] == chosen)
        return bool(model["samples"] == 1)
    await wait_until(taught, WAIT_S, f"a first-token report teaching {chosen}'s model")


async def test_bad_outcome_bodies_get_400_naming_the_field(make_stack: StackFactory) -> None:
    stack = await greybox_stack(make_stack, [A])
    url = f"{stack.api_url}/scheduler/outcome"
    good = b'"pool_name": "p1", "member": "10.0.0.1:8001"'
    cases = [
        (b"not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'{"member": "10.0.0.1:8001", "status": 200}', "pool_name"),
        (b'{"pool_name": "p1", "status": 200}', "member"),
        (b"{" + good + b"}", "status"),
        (b'{"pool_name": "", "member": "10.0.0.1:8001", "status": 200}', "pool_name"),
        (b"{" + good + b', "partition": "", "status": 200}', "partition"),
        (b'{"pool_name": "p1", "member": "node", "status": 200}', "member"),
        (b'{"pool_name": "p1", "member": "10.0.0.1:70000", "status": 200}', "member"),
        (b'{"pool_name": "p1", "member": "fd00::1:80", "status": 200}', "member"),
        (b"{" + good + b', "status": "200"}', "status"),
        (b"{" + good + b', "status": 42}', "status"),
        (b"{" + good + b', "status": 600}', "status"),
        (b"{" + good + b', "status": -1}', "status"),
        (b"{" + good + b', "status": 200, "ttft_ms": -1}', "ttft_ms"),
        (b"{" + good + b', "status": 200, "ttft_ms": "fast"}', "ttft_ms"),
        (b"{" + good + b', "status": 200, "e2e_ms": 1e12}', "e2e_ms"),
        (b"{" + good + b', "status": 200, "ttft_at": "body"}', "ttft_at"),
    ]
    for raw, field in cases:
        r = await stack.http.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.status_code, r.text)
        error = r.json()["error"]
        assert error["param"] == field, (raw, error)
        assert error["message"] and error["code"] == "invalid_body", (raw, error)
        assert error["type"] == "invalid_request_error", (raw, error)

    huge = b'{"pool_name": "' + b"p" * 100_000 + b'", "member": "10.0.0.1:8001", "status": 200}'
    r = await stack.http.post(url, content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "body_too_large", r.text

    r = await stack.http.get(url)
    assert r.status_code == 405, (r.status_code, r.text)
    # Nothing above reached the scheduler: nothing was in flight, nothing went negative.
    assert await inflight(stack) == {A: 0}


async def test_outcome_route_is_documented(make_stack: StackFactory) -> None:
    stack = await greybox_stack(make_stack, [A])
    doc = (await stack.http.get(f"{stack.api_url}/openapi.json")).json()
    post = doc["paths"]["/scheduler/outcome"]["post"]
    assert set(post["responses"]) == {"202", "400", "413", "503"}, post["responses"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/OutcomeReport"}, schema
    report_schema = doc["components"]["schemas"]["OutcomeReport"]
    assert set(report_schema["required"]) == {"pool_name", "member", "status"}, report_schema
    assert {"partition", "ttft_ms", "ttft_at", "e2e_ms"} <= set(report_schema["properties"])
    ttft_at = report_schema["properties"]["ttft_at"]
    assert (ttft_at.get("enum"), ttft_at.get("default")) == (["first_token", "headers"],
                                                              "headers"), ttft_at


async def test_outcome_with_the_bus_down_is_503_with_retry_after(
        tmp_path: Path, redis_url: str, prefix: str) -> None:
    bus = nats_server().start()
    path = write_config(tmp_path / "config.yaml", prefix, [greybox_pool([A])],
                        extra={"modes": [GREYBOX]})
    loaded = load(path)
    port = loaded.config.global_.api_port
    api = InProcess(serve_api, loaded, nats_url=bus.url, redis_url=redis_url, port=port)
    url = f"http://127.0.0.1:{port}/scheduler/outcome"
    body = {"pool_name": "p1", "member": A, "status": 200, "ttft_ms": 90}
    seen: list[httpx.Response] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            async def answers(status: int) -> bool:
                if api.task.done():
                    api.task.result()  # surface a crash instead of a time-out
                seen.append(await http.post(url, json=body))
                return seen[-1].status_code == status

            await wait_until(lambda: answers(202), WAIT_S, "202 with the bus up")
            bus.stop()
            try:
                await wait_until(lambda: answers(503), WAIT_S, "503 with the bus down")
            except AssertionError as err:
                last = seen[-1]
                raise AssertionError(f"{err}; last {last.status_code} {last.text}") from None
            down = seen[-1]
            assert down.headers.get("retry-after") == "1", down.headers
            error = down.json()["error"]
            assert (error["type"], error["code"]) == ("service_unavailable_error",
                                                      "scheduler_unavailable"), error
            bus.start()
            await wait_until(lambda: answers(202), WAIT_S, "202 once the bus is back")
    finally:
        await api.stop()
        bus.stop()
