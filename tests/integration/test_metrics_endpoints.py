"""GET /metrics on every service after real traffic, and the dashboards query only real series.

The whole system runs (scheduler, collector, API, autoscaler, a worker) with the listeners
of the scheduler, collector and autoscaler on free ports. Traffic: F5 selects and outcome
reports, gateway requests to a greybox pool with one live simulated engine and one dead
member (retries, admission waits, refusals), and a request for an alias scaled to zero (held
while the autoscaler starts an instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from shared.http_server import free_port
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.promtext import (
    Exported,
    dashboard_problems,
    load_dashboards,
    scrape,
)
from tests.integration.system import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ENGINE = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=4096,
                      max_num_seqs=4, num_gpu_blocks=4096, speed=1.0, seed=5)

# Families (as the parser names them: counters without _total) every service must export.
FAMILIES: dict[str, set[str]] = {
    "api": {"llmsched_api_select_answers", "llmsched_api_select_duration_seconds",
            "llmsched_api_outcome_reports", "llmsched_gateway_requests",
            "llmsched_gateway_ttft_seconds", "llmsched_gateway_e2e_seconds",
            "llmsched_gateway_retries", "llmsched_gateway_rejections",
            "llmsched_gateway_queued_requests", "llmsched_gateway_queue_wait_seconds",
            "llmsched_gateway_ongoing_requests", "llmsched_gateway_decisions",
            "process_cpu_seconds"},
    "scheduler": {"llmsched_scheduler_decisions", "llmsched_scheduler_excluded_members",
                  "llmsched_scheduler_members", "llmsched_scheduler_inflight_requests",
                  "llmsched_scheduler_metrics_age_seconds",
                  "llmsched_scheduler_predictor_abs_log_error",
                  "llmsched_scheduler_member_selections",
                  "llmsched_scheduler_member_inflight_requests"},
    "collector": {"llmsched_collector_scrape_duration_seconds",
                  "llmsched_collector_member_scrapes", "llmsched_collector_scrape_errors",
                  "llmsched_collector_f5_fetches", "llmsched_collector_f5_fetch_errors",
                  "llmsched_collector_metrics_age_seconds"},
    "autoscaler": {"llmsched_autoscaler_actions", "llmsched_autoscaler_load",
                   "llmsched_autoscaler_instances", "llmsched_autoscaler_leader",
                   "llmsched_autoscaler_inflight_requests",
                   "llmsched_autoscaler_capacity_requests"},
    "worker": {"llmsched_worker_instances", "llmsched_worker_inflight_requests",
               "llmsched_worker_info"},
}


def _samples_seen(got: dict[str, Exported]) -> dict[str, bool]:
    """The traffic's traces: each must show up before the test looks at families."""
    api, sched, coll, scaler = got["api"], got["scheduler"], got["collector"], got["autoscaler"]
    return {
        "select answered a member": api.value("llmsched_api_select_answers_total",
                                              answer="member") > 0,
        "select answered none": api.value("llmsched_api_select_answers_total",
                                          answer="none") > 0,
        "select latency": api.value("llmsched_api_select_duration_seconds_count") > 0,
        "outcome accepted": api.value("llmsched_api_outcome_reports_total",
                                      result="accepted") > 0,
        "gateway 200s": api.value("llmsched_gateway_requests_total", model="sim-chat",
                                  code="200") > 0,
        "gateway 404": api.value("llmsched_gateway_requests_total", code="404") > 0,
        "gateway TTFT": api.value("llmsched_gateway_ttft_seconds_count", model="sim-chat") > 0,
        "gateway e2e": api.value("llmsched_gateway_e2e_seconds_count", model="sim-chat") > 0,
        "gateway retry": api.value("llmsched_gateway_retries_total", model="sim-chat") > 0,
        "admission wait": api.value("llmsched_gateway_queue_wait_seconds_count",
                                    queue="admission") > 0,
        "hold wait": api.value("llmsched_gateway_queue_wait_seconds_count", model="fake-model",
                               queue="hold") > 0,
        "rejection": api.value("llmsched_gateway_rejections_total", model="sim-chat") > 0,
        # The gateway decides in the API process (gateway.decide: local, the default).
        "route decisions": api.value("llmsched_gateway_decisions_total", answer="member") > 0,
        "select decisions": sched.value("llmsched_scheduler_decisions_total",
                                        endpoint="select", reason="pool_unknown") > 0,
        "busy decisions": api.value("llmsched_gateway_decisions_total", answer="busy") > 0,
        "dead member excluded": sched.value("llmsched_scheduler_excluded_members",
                                            pool="s1-pool", reason="scrape_error") >= 1,
        "predictor error": sched.value("llmsched_scheduler_predictor_abs_log_error_count",
                                       pool="sim-pool") > 0,
        "member selections": sched.value("llmsched_scheduler_member_selections_total",
                                         pool="s1-pool") > 0,
        "scrape rounds": coll.value("llmsched_collector_scrape_duration_seconds_count",
                                    pool="s1-pool") > 0,
        "scrape errors": coll.value("llmsched_collector_scrape_errors_total",
                                    pool="s1-pool") > 0,
        "metrics age": bool(coll.samples.get("llmsched_collector_metrics_age_seconds")),
        "autoscaler start": scaler.value("llmsched_autoscaler_actions_total",
                                         alias="fake-model", kind="start", result="ok") > 0,
        "autoscaler leads": scaler.value("llmsched_autoscaler_leader") == 1,
        "alias load": bool([s for s in scaler.samples.get("llmsched_autoscaler_load", [])
                            if s[0].get("alias") == "fake-model"]),
        "worker instance running": got["worker"].value("llmsched_worker_instances",
                                                       model="fake-model",
                                                       state="running") >= 1,
    }


@pytest.fixture
async def engine() -> AsyncIterator[RunningEngine]:
    running = await start_engine(ENGINE)
    yield running
    await running.stop()


async def _start(make_fleet: MakeFleet, live: str, dead: str) -> tuple[Fleet, dict[str, str]]:
    ports = {name: free_port() for name in ("scheduler", "collector", "autoscaler")}
    fleet = await make_fleet(
        pools=[{"name": "s1-pool", "engine_type": "vllm", "source": "static",
                "members": [live, dead], "metrics": {"timeout": 1}},
               {"name": "sim-pool", "engine_type": "vllm", "source": "static",
                "members": [live, dead], "model": "sim-chat", "served_model_name": "tiny",
                "mode": "gb", "metrics": {"timeout": 1}}],
        modes=[{"name": "s1", "w_a": 0.8, "w_b": 0.2},
               {"name": "gb", "type": "greybox",
                "greybox": {"max_inflight": 1, "predictor": {"min_samples": 2}}}],
        gateway={"hold_queue_size": 2, "hold_timeout_s": 60},
        config={"metrics": {"host": "127.0.0.1", "member_labels": True,
                            **{f"{name}_port": port for name, port in ports.items()}}})
    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    urls["api"] = f"{fleet.api}/metrics"
    urls["worker"] = f"{fleet.workers[0].url}/metrics"
    return fleet, urls


def _chat(model: str, max_tokens: int = 8) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}]}


async def _traffic(fleet: Fleet, http: httpx.AsyncClient, live: str, dead: str) -> None:
    """Every kind of event the families describe, at least once."""
    api = fleet.api
    for _ in range(20):
        r = await http.post(f"{api}/scheduler/select", json={
            "pool_name": "s1-pool", "partition": "Common", "members": [live, dead]})
        assert r.status_code == 200, r.text
    r = await http.post(f"{api}/scheduler/select", json={
        "pool_name": "no-such-pool", "partition": "Common", "members": [live]})
    assert r.text == "none", r.text
    r = await http.post(f"{api}/scheduler/outcome", json={
        "pool_name": "s1-pool", "member": live, "status": 200, "ttft_ms": 40, "e2e_ms": 90})
    assert r.status_code == 202, r.text
    r = await http.post(f"{api}/v1/chat/completions", json=_chat("no-such-model"))
    assert r.status_code == 404, r.text
    # One at a time: some land on the dead member first and are retried on the live one.
    for _ in range(12):
        r = await http.post(f"{api}/v1/chat/completions", json=_chat("sim-chat"))
        assert r.status_code == 200, r.text
    # A burst: one slot per member, a line of 2 — the rest are refused (429 queue_full).
    burst = await asyncio.gather(*(http.post(f"{api}/v1/chat/completions",
                                             json=_chat("sim-chat", 60)) for _ in range(8)))
    codes = sorted(r.status_code for r in burst)
    assert set(codes) <= {200, 429}, [r.text[:200] for r in burst]
    await fleet.register({**FAKE, "autoscaling": {"min_replicas": 0, "max_replicas": 1}})
    r = await http.post(f"{api}/v1/chat/completions", json=_chat("fake-model"))
    assert r.status_code == 200, r.text


async def test_every_service_exports_its_metrics_and_dashboards_query_only_those(
        make_fleet: MakeFleet, engine: RunningEngine) -> None:
    live, dead = engine.url.split("//", 1)[1], f"127.0.0.1:{free_port()}"
    fleet, urls = await _start(make_fleet, live, dead)
    http = httpx.AsyncClient(timeout=60)
    got: dict[str, Exported] = {}
    missing: list[str] = []
    try:
        async def members_known() -> bool:
            r = await http.get(f"{fleet.api}/pools/sim-pool/Common/status")
            return r.status_code == 200 and r.json()["member_count"] == 2
        await wait_until(members_known, 30, "the static pools' members known")
        await _traffic(fleet, http, live, dead)
        deadline = time.monotonic() + 60
        while True:
            # Retries and refusals depend on which member the router picks: more traffic
            # until each has happened (bounded by the deadline).
            got = {name: await scrape(http, url) for name, url in urls.items()}
            missing = [what for what, ok in _samples_seen(got).items() if not ok]
            if not missing or time.monotonic() > deadline:
                break
            with contextlib.suppress(httpx.HTTPError):
                await _traffic(fleet, http, live, dead)
            await asyncio.sleep(0.5)
        assert not missing, (f"never seen: {missing}; api /metrics:\n"
                             + "\n".join(line for line in got["api"].text.splitlines()
                                         if line.startswith("llmsched_gateway")))
        for service, families in FAMILIES.items():
            absent = families - set(got[service].types)
            assert not absent, f"{service} /metrics lacks {sorted(absent)}: {urls[service]}"
        exported = set().union(*(g.series_names() for g in got.values()))
        for name, dashboard in load_dashboards().items():
            assert dashboard_problems(dashboard, exported) == [], name
    finally:
        await http.aclose()


async def test_a_listener_port_in_use_is_logged_and_the_service_runs_on(
        make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture) -> None:
    taken = free_port()
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        fleet = await make_fleet(worker=False, autoscalers=0, config={
            "metrics": {"host": "127.0.0.1", "scheduler_port": taken}})
        r = await fleet.http.post(f"{fleet.api}/scheduler/select", json={
            "pool_name": "p", "partition": "Common", "members": ["10.0.0.1:1"]})
        assert r.status_code == 200 and r.text == "none", r.text
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "llmsched.metrics"]
    assert any(f"cannot listen on 127.0.0.1:{taken}" in line for line in lines), lines
