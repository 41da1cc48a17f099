"""Each role of a PD pool routed by its strategy; failures, health and drain per instance."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.integration.pd_stack import MakePD, PDStack, make_pd_fixture  # noqa: F401
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

TWO_BY_TWO = {"p1": ("prefill", 20.0), "p2": ("prefill", 20.0),
              "d1": ("decode", 20.0), "d2": ("decode", 20.0)}


async def _picks(stack: PDStack, n: int, **kwargs: Any) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        r = await stack.chat(**kwargs)
        assert r.status_code == 200, r.text
        out.append((stack.id_of(r.headers["x-llmsched-prefill"]),
                    stack.id_of(r.headers["x-llmsched-decode"])))
    return out


async def test_round_robin_takes_turns_in_each_role(make_pd: MakePD) -> None:
    stack = await make_pd(TWO_BY_TWO, pd={"strategy": "round_robin"})
    picks = await _picks(stack, 6)
    prefills, decodes = [p for p, _ in picks], [d for _, d in picks]
    assert all(a != b for a, b in itertools.pairwise(prefills)), picks
    assert all(a != b for a, b in itertools.pairwise(decodes)), picks
    assert Counter(prefills) == {"p1": 3, "p2": 3} and Counter(decodes) == {"d1": 3, "d2": 3}


async def test_least_load_avoids_the_decode_busy_with_a_long_request(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 0.5),
                           "d2": ("decode", 0.5)})
    # Seconds on a 0.5x engine (minutes on a busy box: a generous timeout).
    long = asyncio.create_task(stack.chat(max_tokens=300, timeout_s=300))

    async def routed() -> bool:
        r = await stack.http.get(f"{stack.api}/pools/chat@decode/Common/status")
        return any(m["inflight"] for m in r.json()["members"])
    await wait_until(routed, 20, "the long request counted in flight on a decode")
    r = await stack.http.get(f"{stack.api}/pools/chat@decode/Common/status")
    busy = next(stack.id_of(f"{m['ip']}:{m['port']}") for m in r.json()["members"]
                if m["inflight"])
    picks = await _picks(stack, 4, max_tokens=2)
    assert {d for _, d in picks} == {"d1", "d2"} - {busy}, (busy, picks)
    done = await long
    assert done.status_code == 200 and stack.id_of(done.headers["x-llmsched-decode"]) == busy


async def test_weighted_on_latency_alone_settles_on_the_faster_decode(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 1.0),
                           "d2": ("decode", 40.0)},
                          pd={"decode_strategy": "weighted", "load_weight": 0,
                              "kv_cache_weight": 0, "latency_weight": 1})
    seen: list[str] = []
    # Usually settled within ten requests; the headroom is for a busy machine, where one slow
    # window can make d2 look slow until the scorer retries it (every 5 s, a coin flip).
    for _ in range(150):
        r = await stack.chat("x " * 200, max_tokens=2)
        assert r.status_code == 200, r.text
        seen.append(stack.id_of(r.headers["x-llmsched-decode"]))
        await asyncio.sleep(0.15)  # the next scrape carries this request's TTFT
        if len(seen) >= 8 and set(seen) == {"d1", "d2"} and seen[-5:] == ["d2"] * 5:
            break
    assert "d1" in seen, f"the slow decode was never measured: {seen}"
    assert seen[-5:] == ["d2"] * 5, seen


async def test_a_greybox_mode_routes_one_role(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0),
                           "d2": ("decode", 20.0)},
                          pd={"decode_strategy": "gb"},
                          extra={"modes": [{"name": "s1"}, {"name": "gb", "type": "greybox"}]})
    picks = await _picks(stack, 4)
    assert {p for p, _ in picks} == {"p1"}
    r = await stack.http.get(f"{stack.api}/pools/chat@decode/Common/status")
    status = r.json()
    assert status["mode"] == "gb" and all("greybox" in m for m in status["members"]), status


async def _traffic(stack: PDStack, stop: asyncio.Event, results: list[tuple[str, str]],
                   stream: bool) -> None:
    """Requests one after another until ``stop``: (kind, outcome) per request."""
    while not stop.is_set():
        body = {"model": "chat", "messages": [{"role": "user", "content": "go " * 50}],
                "max_tokens": 40, "stream": stream}
        if not stream:
            r = await stack.http.post(f"{stack.api}/v1/chat/completions", json=body)
            results.append(("whole", "ok" if r.status_code == 200 else f"{r.status_code} "
                            f"{r.text[:200]}"))
            continue
        chunks = 0
        try:
            async with stack.http.stream("POST", f"{stack.api}/v1/chat/completions",
                                         json=body) as r:
                if r.status_code != 200:
                    results.append(("stream", f"{r.status_code} {(await r.aread())[:200]!r}"))
                    continue
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        chunks += 1
                results.append(("stream", "ok" if chunks else "empty"))
        except httpx.HTTPError as err:
            results.append(("stream", "cut after first byte" if chunks
                            else f"failed before any byte: {err!r}"))


async def test_killing_a_prefill_and_a_decode_fails_no_request_not_yet_streaming(
        make_pd: MakePD) -> None:
    stack = await make_pd(TWO_BY_TWO)
    stop = asyncio.Event()
    results: list[tuple[str, str]] = []
    workers = [asyncio.create_task(_traffic(stack, stop, results, stream=i % 2 == 1))
               for i in range(6)]
    try:
        await wait_until(lambda: _count(results, 10), 30, "traffic flowing")
        await stack.http.post(stack.engines["p1"].url + "/_sim/faults", json={"crash": "close"})
        mark = len(results)
        await wait_until(lambda: _count(results, mark + 10), 30, "traffic after the prefill died")
        await stack.http.post(stack.engines["d1"].url + "/_sim/faults", json={"crash": "close"})
        mark = len(results)
        await wait_until(lambda: _count(results, mark + 10), 30, "traffic after the decode died")
        await stack.wait_routable("prefill", {"p2"})
        await stack.wait_routable("decode", {"d2"})
    finally:
        stop.set()
        await asyncio.gather(*workers)
    bad = [r for r in results if r[1] not in ("ok", "cut after first byte")]
    assert not bad, f"{len(bad)} of {len(results)} failed: {bad[:5]}"
    assert sum(1 for _, outcome in results if outcome == "ok") >= 30, Counter(results)


async def _count(results: list[tuple[str, str]], n: int) -> bool:
    return len(results) >= n


async def test_an_unhealthy_instance_leaves_routing_and_comes_back(make_pd: MakePD) -> None:
    stack = await make_pd(TWO_BY_TWO)
    faults = stack.engines["p1"].url + "/_sim/faults"
    assert (await stack.http.post(faults, json={"unhealthy": True})).status_code == 200
    await stack.wait_routable("prefill", {"p2"})
    view = (await stack.instances("prefill"))["p1"]
    assert view["healthy"] is False and view["health_error"] == "answered 503", view
    assert {p for p, _ in await _picks(stack, 4)} == {"p2"}
    assert (await stack.http.post(faults, json={"unhealthy": False})).status_code == 200
    await stack.wait_routable("prefill", {"p1", "p2"})
    assert (await stack.instances("prefill"))["p1"]["healthy"] is True
    prefills: set[str] = set()
    deadline = time.monotonic() + 30
    while "p1" not in prefills and time.monotonic() < deadline:
        prefills |= {p for p, _ in await _picks(stack, 2)}
    assert "p1" in prefills, prefills


async def test_run_health_checks_now_answers_with_each_verdict(make_pd: MakePD) -> None:
    stack = await make_pd(TWO_BY_TWO, pd={"health_check_interval": 60,
                                          "health_failure_threshold": 1})
    await stack.http.post(stack.engines["d2"].url + "/_sim/faults", json={"unhealthy": True})
    r = await stack.http.post(f"{stack.api}/admin/pd/chat/health-check")
    assert r.status_code == 200, r.text
    verdicts = {i["id"]: i["healthy"] for i in r.json()["instances"]}
    assert verdicts == {"p1": True, "p2": True, "d1": True, "d2": False}, r.text
    await stack.wait_routable("decode", {"d1"})


async def test_drain_finishes_requests_in_flight_and_takes_no_new_ones(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 0.5),
                           "d2": ("decode", 0.5)})
    long = asyncio.create_task(stack.chat(max_tokens=300, timeout_s=300))  # 0.5x: seconds

    async def busy() -> bool:
        return any(v["inflight"] for v in (await stack.instances("decode")).values())
    await wait_until(busy, 20, "the long request in flight on a decode")
    drained_id = next(i for i, v in (await stack.instances("decode")).items() if v["inflight"])
    other = ({"d1", "d2"} - {drained_id}).pop()
    started = time.monotonic()
    drain = asyncio.create_task(stack.http.post(
        f"{stack.api}/admin/pd/chat/instances/{drained_id}/drain", params={"wait": "true"}))
    await stack.wait_routable("decode", {other})
    picks = await _picks(stack, 4, max_tokens=2)
    assert {d for _, d in picks} == {other}, picks
    done = await long
    assert done.status_code == 200, done.text
    r = await drain
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["state"] == "drained" and view["drain"]["timed_out"] is False, view
    assert view["inflight"] == 0 and view["routable"] is False, view
    assert time.monotonic() - started < 30
    listed = await stack.instances("decode")
    assert listed[drained_id]["state"] == "drained", listed


async def test_a_drain_times_out_after_drain_timeout(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 0.3)},
                          pd={"drain_timeout": 1.0})
    long = asyncio.create_task(stack.chat(max_tokens=600, timeout_s=300))

    async def busy() -> bool:
        return bool((await stack.instances("decode"))["d1"]["inflight"])
    await wait_until(busy, 20, "a request in flight on d1")
    started = time.monotonic()
    r = await stack.http.post(f"{stack.api}/admin/pd/chat/instances/d1/drain",
                              params={"wait": "true"})
    waited = time.monotonic() - started
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["state"] == "drained" and view["drain"]["timed_out"] is True, view
    assert view["inflight"] == 1 and waited >= 0.9, (view, waited)
    assert not long.done()
    long.cancel()
