"""Every branch of SPEC §1.2 and every answer of §1.1, through the real API and scheduler."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.integration.conftest import Stack, StackFactory
from tests.integration.system import edit_config, wait_until

pytestmark = pytest.mark.integration

A, B, C = "10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"
V6 = "[fd00::7]:8000"
FRESH_MS = 10_000
"""Metrics interval of tests that publish metrics once: they stay fresh for 30 s, however
slow a busy machine makes the test (the default 200 ms would make them stale after 0.6 s)."""


def pool(name: str = "p1", **fallback: object) -> dict[str, object]:
    return {"name": name, "partition": "Common", "engine_type": "vllm", "source": "static",
            "members": [A, B, C], "fallback": dict(fallback)}


async def counts(stack: Stack, pool_name: str, members: list[str], n: int) -> Counter[str]:
    results = await asyncio.gather(*(stack.select(pool_name, members) for _ in range(n)))
    return Counter(results)


async def ready(stack: Stack, members: list[str], metrics: dict[str, tuple[float, float, float]
                                                               | None], name: str = "p1") -> None:
    await stack.bus.snapshot(name, members)
    await stack.bus.metrics(name, metrics)
    live = [k for k, v in metrics.items() if v is not None]
    if live:
        await stack.wait_select(name, [live[0]], live[0])


async def test_selects_member_exactly_as_requested(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await ready(stack, [A, B], {A: (0, 1, 0.1), B: (0, 1, 0.1)})
    got = await counts(stack, "p1", [A, B], 60)
    assert set(got) == {A, B}


async def test_ipv6_member_key_round_trips(make_stack: StackFactory) -> None:
    p = pool()
    p["members"] = [V6]
    stack = await make_stack([p], metrics_ms=FRESH_MS)
    await ready(stack, [V6], {V6: (0, 0, 0.2)})
    assert await stack.select("p1", [V6]) == V6


async def test_pool_fallback_answers_before_anything_else(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(pool_fallback=True)], metrics_ms=FRESH_MS)
    # No snapshot and no metrics at all: fallback still wins.
    assert await stack.select("p1", [A]) == "fallback"


async def test_unknown_pool_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await ready(stack, [A], {A: (0, 0, 0.1)})
    assert await stack.select("nope", [A]) == "none"
    assert await stack.select("p1", [A], partition="Other") == "none"


async def test_configured_pool_without_membership_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    assert await stack.select("p1", [A]) == "none"


async def test_empty_pool_and_empty_request(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(), pool("p2")], metrics_ms=FRESH_MS)
    await ready(stack, [A], {A: (0, 0, 0.1)})
    assert await stack.select("p1", []) == "none"
    await stack.bus.snapshot("p2", [])
    await asyncio.sleep(0.2)
    assert await stack.select("p2", [A]) == "none"


async def test_no_intersection_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await ready(stack, [A, B], {A: (0, 0, 0.1), B: (0, 0, 0.1)})
    assert await stack.select("p1", ["10.9.9.9:1", "garbage"]) == "none"


async def test_unavailable_members_are_never_chosen(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await stack.bus.snapshot("p1", [A, B], unavailable=(B,))
    await stack.bus.metrics("p1", {A: (5, 5, 0.9), B: (0, 0, 0.0)})
    await stack.wait_select("p1", [A], A)
    assert set(await counts(stack, "p1", [A, B], 40)) == {A}
    assert await stack.select("p1", [B]) == "none"


async def test_running_threshold_excludes_overloaded_member(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(member_running_req_threshold=10)], metrics_ms=FRESH_MS)
    await ready(stack, [A, B], {A: (0, 3, 0.1), B: (0, 11, 0.1)})
    assert set(await counts(stack, "p1", [A, B], 40)) == {A}


async def test_waiting_threshold_excludes_overloaded_member(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(member_waiting_queue_threshold=4)], metrics_ms=FRESH_MS)
    await ready(stack, [A, B], {A: (4, 0, 0.1), B: (5, 0, 0.1)})
    assert set(await counts(stack, "p1", [A, B], 40)) == {A}


async def test_every_member_over_threshold_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(member_running_req_threshold=2,
                                   member_waiting_queue_threshold=2)], metrics_ms=FRESH_MS)
    await stack.bus.snapshot("p1", [A, B])
    await stack.bus.metrics("p1", {A: (3, 0, 0.1), B: (0, 3, 0.1)})
    await asyncio.sleep(0.3)
    assert await stack.select("p1", [A, B]) == "none"


async def test_member_without_metrics_kept_by_filter_but_scores_zero(
        make_stack: StackFactory) -> None:
    stack = await make_stack([pool(member_running_req_threshold=2)], metrics_ms=FRESH_MS)
    await stack.bus.snapshot("p1", [A, B])
    await stack.bus.metrics("p1", {A: (0, 5, 0.1)})  # A over threshold; B never measured

    async def both_known() -> bool:
        r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
        return r.status_code == 200 and len(r.json().get("members", [])) == 2
    await wait_until(both_known, 15, "the snapshot of A and B")
    # B survives the filter (conservative) but scores 0 → none, not an error.
    assert await stack.select("p1", [A, B]) == "none"
    r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
    members = {m["key"]: m for m in r.json()["members"]}
    assert members[B]["stale"] is True and members[B]["score"] == 0


async def test_metrics_missing_for_all_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await stack.bus.snapshot("p1", [A, B])
    await stack.bus.metrics("p1", {A: None, B: None})
    await asyncio.sleep(0.3)
    assert await stack.select("p1", [A, B]) == "none"


async def test_all_scores_zero_answers_none(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    # Both at the largest queue (normalised 1) and a full KV cache: S1 score 0.
    await stack.bus.snapshot("p1", [A, B])
    await stack.bus.metrics("p1", {A: (7, 8, 1.0), B: (7, 8, 1.0)})
    await asyncio.sleep(0.3)
    assert await stack.select("p1", [A, B]) == "none"


async def test_stale_metrics_score_zero(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=1000)  # stale after 3 x 1 s
    await stack.bus.snapshot("p1", [A, B])
    await stack.bus.metrics("p1", {A: (0, 0, 0.0)}, age_s=5)
    await stack.bus.metrics("p1", {B: (9, 9, 0.9)})
    await stack.wait_select("p1", [B], B)
    assert set(await counts(stack, "p1", [A, B], 40)) == {B}
    await stack.bus.metrics("p1", {B: (9, 9, 0.9)}, age_s=5)
    await stack.wait_select("p1", [A, B], "none")


async def test_failed_scrape_keeps_values_until_they_go_stale(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=1000)  # stale after 3 s
    await ready(stack, [A], {A: (0, 0, 0.1)})
    await stack.bus.metrics("p1", {A: None})
    assert await stack.select("p1", [A]) == A
    await stack.wait_select("p1", [A], "none", timeout_s=15)
    r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
    assert r.json()["members"][0]["scrape_error"] == "connect timeout"


async def test_s1_shares_follow_the_formula(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    await ready(stack, [A, B, C], {A: (0, 0, 0.0), B: (4, 0, 0.5), C: (8, 0, 1.0)})
    r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/analyze?iterations=4000",
                              json={"pool_name": "p1", "partition": "Common",
                                    "members": [A, B, C]})
    assert r.status_code == 200, r.text
    body = r.json()
    # w_a=0.8, w_b=0.2: A = 1.0, B = 0.8·0.5 + 0.2·0.5 = 0.5, C = 0
    theo = {k: v["theoretical_probability"] for k, v in body["member_analysis"].items()}
    assert theo[A] == pytest.approx(2 / 3, abs=1e-3)
    assert theo[B] == pytest.approx(1 / 3, abs=1e-3)
    assert theo[C] == 0
    assert body["member_analysis"][C]["selection_count"] == 0
    assert abs(body["member_analysis"][A]["actual_probability"] - 2 / 3) < 0.05
    assert body["overall_stats"]["total_iterations"] == 4000
    assert 0 < body["overall_stats"]["quality_score"] <= 100
    r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/simulate?iterations=300",
                              json={"pool_name": "p1", "partition": "Common",
                                    "members": [A, B, C]})
    sim = r.json()
    assert sim["iterations"] == 300 and sum(sim["results"].values()) == 300
    assert C not in sim["results"]


async def test_bad_bodies_get_400_naming_the_field(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    url = f"{stack.api_url}/scheduler/select"
    cases = [
        (b"not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'{"partition": "Common", "members": []}', "pool_name"),
        (b'{"pool_name": "p1"}', "members"),
        (b'{"pool_name": "p1", "members": "10.0.0.1:8001"}', "members"),
        (b'{"pool_name": 5, "members": []}', "pool_name"),
        (b'{"pool_name": "p1", "members": [1]}', "members[0]"),
        (b'{"pool_name": "", "members": []}', "pool_name"),
    ]
    for raw, field in cases:
        r = await stack.http.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.status_code, r.text)
        assert r.json()["error"]["param"] == field, (raw, r.json())
        assert r.json()["error"]["message"] and r.json()["error"]["code"] == "invalid_body"


async def test_iterations_are_bounded(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    body = {"pool_name": "p1", "partition": "Common", "members": [A]}
    for q in ("0", "-5", "1000000000", "abc"):
        r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/simulate?iterations={q}",
                                  json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "iterations", r.text
        r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/analyze?iterations={q}",
                                  json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "iterations", r.text
    r = await stack.http.post(f"{stack.api_url}/pools/p1/Common/simulate", json={
        "pool_name": "other", "partition": "Common", "members": [A]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "pool_name"


async def test_status_endpoints(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(), pool("p2")], metrics_ms=FRESH_MS)
    await ready(stack, [A, B], {A: (1, 2, 0.3), B: (3, 4, 0.5)})
    r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "p1" and body["partition"] == "Common"
    assert body["engine_type"] == "vllm" and body["member_count"] == 2
    by_ip = {(m["ip"], m["port"]): m for m in body["members"]}
    assert by_ip[("10.0.0.1", 8001)]["metrics"]["waiting_queue"] == 1
    assert by_ip[("10.0.0.2", 8001)]["metrics"]["cache_usage"] == 0.5
    assert by_ip[("10.0.0.1", 8001)]["score"] > by_ip[("10.0.0.2", 8001)]["score"]
    r = await stack.http.get(f"{stack.api_url}/pools/missing/Common/status")
    assert r.status_code == 404
    r = await stack.http.get(f"{stack.api_url}/pools/status")
    assert {p["name"] for p in r.json()["pools"]} == {"p1", "p2"}


async def test_health_tells_the_truth(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], metrics_ms=FRESH_MS)
    r = await stack.http.get(f"{stack.api_url}/health")
    assert r.status_code == 200 and r.json()["status"] == "healthy"
    await stack.services[0].stop()  # the only scheduler replica
    r = await stack.http.get(f"{stack.api_url}/health")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    r = await stack.http.post(f"{stack.api_url}/scheduler/select",
                              json={"pool_name": "p1", "members": [A]})
    assert r.status_code == 503


async def test_hot_reload_pool_fallback_and_thresholds(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], interval=0.2, metrics_ms=3000)
    await ready(stack, [A, B], {A: (0, 12, 0.1), B: (0, 1, 0.1)})

    def set_fallback(doc: dict[str, object]) -> None:
        doc["pools"][0]["fallback"] = {"pool_fallback": True}  # type: ignore[index]
    edit_config(stack.config_path, set_fallback)
    await stack.wait_select("p1", [A, B], "fallback", timeout_s=15)

    def set_threshold(doc: dict[str, object]) -> None:
        doc["pools"][0]["fallback"] = {"pool_fallback": False,  # type: ignore[index]
                                       "member_running_req_threshold": 10}
    edit_config(stack.config_path, set_threshold)
    await stack.wait_select("p1", [A, B], B, timeout_s=15)
    assert set(await counts(stack, "p1", [A, B], 30)) == {B}


async def test_hot_reload_rejects_a_broken_file(make_stack: StackFactory) -> None:
    stack = await make_stack([pool(member_running_req_threshold=10)], interval=0.2,
                             metrics_ms=3000)
    await ready(stack, [A, B], {B: (0, 1, 0.1), A: (0, 12, 0.1)})
    good = stack.config_path.read_text()
    stack.config_path.write_text(good.replace("engine_type: vllm", "engine_type: nosuch"))
    await asyncio.sleep(0.8)
    await stack.bus.metrics("p1", {B: (0, 1, 0.1), A: (0, 12, 0.1)})
    assert await stack.select("p1", [A, B]) == B  # old config (threshold, no fallback) stays
    stack.config_path.write_text("global: [unclosed")
    await asyncio.sleep(0.6)
    await stack.bus.metrics("p1", {B: (0, 1, 0.1), A: (0, 12, 0.1)})
    got = await counts(stack, "p1", [A, B], 20)
    status = (await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")).json()
    assert set(got) == {B}, status
    stack.config_path.write_text(good)

    def set_fallback(doc: dict[str, object]) -> None:
        doc["pools"][0]["fallback"]["pool_fallback"] = True  # type: ignore[index]
    edit_config(stack.config_path, set_fallback)
    await stack.wait_select("p1", [A, B], "fallback", timeout_s=15)


async def test_two_replicas_share_the_load_and_agree(make_stack: StackFactory) -> None:
    stack = await make_stack([pool()], replicas=2, metrics_ms=FRESH_MS)

    async def both_answer() -> bool:
        r = await stack.http.get(f"{stack.api_url}/health")
        return bool(r.json()["checks"]["scheduler_replicas"] == 2)
    # A replica answers PING only once it follows the bus: publish after both do, or the
    # late one never sees this test's one-off snapshot and answers none.
    await wait_until(both_answer, 30, "two replicas answering PING")
    await ready(stack, [A, B], {A: (0, 0, 0.0), B: (10, 0, 1.0)})
    got = await counts(stack, "p1", [A, B], 100)
    assert got == Counter({A: 100})
