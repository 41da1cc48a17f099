"""Table-driven tests of the services' own series: answer kinds, exclusion reasons, PromQL names."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.api.gateway.metrics import GatewayMetrics
from services.api.metrics import SelectMetrics
from services.scheduler.metrics import SchedulerMetrics, exclusion
from shared.config import FallbackConfig, GreyboxConfig, ModeConfig, parse_config
from shared.metrics import exposition, new_registry
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.registry import build_profile, default_registry
from shared.scheduling.view import MemberState
from tests.integration.promtext import (
    Exported,
    dashboard_problems,
    dashboard_queries,
    load_dashboards,
    promql_metric_names,
)

NOW = 1000.0


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, b"10.0.0.1:8000", "member"), (200, b"none", "none"), (200, b"fallback", "fallback"),
    (200, b"busy", "busy"), (400, b"{}", "invalid"), (413, b"{}", "invalid"),
    (503, b"{}", "unavailable"), (500, b"{}", "error")])
def test_select_answers_are_counted_by_kind(status: int, body: bytes, kind: str) -> None:
    registry = CollectorRegistry()
    metrics = SelectMetrics(registry)
    metrics.select(status, body, 0.0004)
    got = Exported(generate_latest(registry).decode())
    assert got.value("llmsched_api_select_answers_total", answer=kind) == 1, got.text
    assert got.value("llmsched_api_select_answers_total") == 1, got.text
    assert got.value("llmsched_api_select_duration_seconds_bucket", le="0.0005") == 1


def test_member_labels_only_when_switched_on() -> None:
    for switch in (False, True):
        registry = CollectorRegistry()
        metrics = SchedulerMetrics(registry, member_labels=switch)
        metrics.decided("route", "p", "Common", "10.0.0.1:8000", "selected")
        metrics.decided("select", "p", "Common", "none", "all_zero")
        got = Exported(generate_latest(registry).decode())
        assert got.value("llmsched_scheduler_decisions_total", answer="member") == 1
        assert got.value("llmsched_scheduler_decisions_total", answer="none",
                         reason="all_zero") == 1
        members = got.samples.get("llmsched_scheduler_member_selections_total", [])
        assert bool(members) is switch, got.text
        assert all("member" not in labels for labels, _ in
                   got.samples["llmsched_scheduler_decisions_total"])


@pytest.mark.parametrize(("predicted", "observed", "counted"), [
    (0.2, 0.2, 1), (0.1, 0.2, 1), (None, 0.2, 0), (0.0, 0.2, 0), (0.2, 0.0, 0)])
def test_predictor_error_is_the_distance_of_logs(predicted: float | None, observed: float,
                                                 counted: int) -> None:
    registry = CollectorRegistry()
    SchedulerMetrics(registry).learned(("p", "Common"), predicted, observed)
    got = Exported(generate_latest(registry).decode())
    count = got.value("llmsched_scheduler_predictor_abs_log_error_count", pool="p")
    assert count == counted
    if counted and predicted == 0.1:  # a factor of 2: ln 2 ≈ 0.69
        assert got.value("llmsched_scheduler_predictor_abs_log_error_bucket", le="0.5") == 0
        assert got.value("llmsched_scheduler_predictor_abs_log_error_bucket", le="0.75") == 1


def _member(**kw: object) -> MemberState:
    base: dict[str, object] = {"key": "m", "host": "10.0.0.1", "port": 1, "available": True,
                               "waiting_queue": 0.0, "running_req": 0.0, "cache_usage": 0.1,
                               "metrics_at": NOW - 0.1}
    base.update(kw)
    return MemberState(**base)  # type: ignore[arg-type]


CTX = DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                      rng=random.Random(1))
S1 = build_profile(default_registry(), ModeConfig(),
                   FallbackConfig(member_running_req_threshold=5))
LEAST = build_profile(default_registry(), ModeConfig(type="least_load"), FallbackConfig())
GREY = build_profile(default_registry(), ModeConfig(type="greybox", greybox=GreyboxConfig(
    max_inflight=2, max_kv_usage=0.9, resume_kv_usage=0.8)), FallbackConfig())


@pytest.mark.parametrize(("member", "profile", "reason"), [
    (_member(), S1, None),
    (_member(available=False), S1, "unavailable"),
    (_member(asleep=True), S1, "asleep"),
    (_member(running_req=9.0), S1, "threshold"),
    (_member(metrics_at=NOW - 60), S1, "stale"),
    (_member(metrics_at=NOW - 60, last_error="connect failed"), S1, "scrape_error"),
    (_member(metrics_at=None, last_error="timeout"), LEAST, None),  # rated on in-flight
    (_member(inflight=2), GREY, "inflight_limit"),
    (_member(cache_usage=0.95), GREY, "kv_usage"),
    (_member(circuit="open", open_until=NOW + 10), GREY, "circuit_open"),
    (_member(metrics_at=NOW - 60), GREY, None),  # stale_policy inflight_only
])
def test_exclusion_reasons(member: MemberState, profile: object, reason: str | None) -> None:
    assert exclusion(member, profile, CTX) == reason  # type: ignore[arg-type]


def test_the_registry_is_the_process_own_and_carries_process_series() -> None:
    one, two = new_registry(), new_registry()
    SelectMetrics(one)
    SelectMetrics(two)  # no clash: nothing is registered on a global
    text = exposition(one).decode()
    assert "llmsched_api_select_answers_total" in text and "process_cpu_seconds_total" in text


def test_listener_ports_are_checked_at_load() -> None:
    assert parse_config("metrics: {scheduler_port: 0}").metrics.port_of("scheduler") == 0
    assert parse_config("").metrics.port_of("collector") is None
    with pytest.raises(Exception, match="scheduler_port must be a TCP port"):
        parse_config("metrics: {scheduler_port: 70000}")
    with pytest.raises(Exception, match="unknown field `colector_port`"):
        parse_config("metrics: {colector_port: 9102}")


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (answer) (rate(llmsched_api_select_answers_total{job="a"}[$__rate_interval]))',
     {"llmsched_api_select_answers_total"}),
    ('histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{model=~"$model"}[5m])))',
     {"x_bucket"}),
    ("max by (alias) (a_load and on (instance) (a_leader == 1))", {"a_load", "a_leader"}),
    ("sum(rate(errs_total[1m])) / sum(rate(all_total[1m])) > bool 1e-3",
     {"errs_total", "all_total"}),
])
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_dashboard_check_catches_an_unknown_metric() -> None:
    dashboards = load_dashboards()
    for name, dashboard in dashboards.items():
        exported = {n for _t, q in dashboard_queries(dashboard) for n in promql_metric_names(q)}
        assert dashboard_problems(dashboard, exported) == [], name
        broken = {**dashboard, "panels": [*dashboard["panels"], {
            "title": "typo", "targets": [{"expr": "rate(llmsched_api_selects_total[1m])"}]}]}
        problems = dashboard_problems(broken, exported)
        assert any("llmsched_api_selects_total is not exported" in p for p in problems), name


def test_every_histogram_has_distinct_buckets() -> None:
    registry = CollectorRegistry()
    SelectMetrics(registry).select(200, b"none", 0.001)
    gateway = GatewayMetrics(registry)
    gateway.request("m", 200, 0.1, 0.2)
    gateway.queued("m", "hold")
    gateway.dequeued("m", "hold", 3.0)
    SchedulerMetrics(registry).learned(("p", "Common"), 0.1, 0.2)
    got = Exported(generate_latest(registry).decode())
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    for name, samples in got.samples.items():
        if name.endswith("_bucket"):
            for labels, _value in samples:
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                seen.setdefault((name, rest), []).append(labels["le"])
    assert len(seen) >= 4, seen
    for (name, _rest), bounds in seen.items():
        assert len(bounds) == len(set(bounds)), f"{name} repeats a bucket: {bounds}"


def test_gateway_requests_and_latencies_export_as_counters_and_cumulative_buckets() -> None:
    registry = CollectorRegistry()
    gateway = GatewayMetrics(registry)
    gateway.request("m", 200, 0.03, 0.05)  # TTFT in the 0.05 bucket; e2e exactly on a bound
    gateway.request("m", 200, 400.0, 500.0)  # past every bound: +Inf only
    gateway.request("m", 503, None, 0.001)  # no engine answered: counted, no latency
    gateway.request("", 404, None, 0.0)
    got = Exported(generate_latest(registry).decode())
    assert got.value("llmsched_gateway_requests_total", model="m", code="200") == 2, got.text
    assert got.value("llmsched_gateway_requests_total", model="m", code="503") == 1, got.text
    assert got.value("llmsched_gateway_requests_total", model="", code="404") == 1, got.text
    ttft = "llmsched_gateway_ttft_seconds"
    assert got.value(f"{ttft}_bucket", model="m", le="0.025") == 0, got.text
    assert got.value(f"{ttft}_bucket", model="m", le="0.05") == 1, got.text
    assert got.value(f"{ttft}_bucket", model="m", le="300.0") == 1, got.text
    assert got.value(f"{ttft}_bucket", model="m", le="+Inf") == 2, got.text
    assert got.value(f"{ttft}_count", model="m") == 2, got.text
    assert got.value(f"{ttft}_sum", model="m") == pytest.approx(400.03), got.text
    e2e = "llmsched_gateway_e2e_seconds"
    assert got.value(f"{e2e}_bucket", model="m", le="0.05") == 1, got.text  # le: <= bound
    assert got.value(f"{e2e}_bucket", model="m", le="0.025") == 0, got.text


def test_gateway_decisions_count_by_answer_kind_and_reason() -> None:
    registry = CollectorRegistry()
    gateway = GatewayMetrics(registry)
    for answer, reason in (("10.0.0.1:8000", "selected"), ("10.0.0.2:8000", "selected"),
                           ("busy", "all_guarded"), ("none", "pool_empty")):
        gateway.decided(answer, reason)
    got = Exported(generate_latest(registry).decode())
    name = "llmsched_gateway_decisions_total"
    assert got.value(name, answer="member", reason="selected") == 2, got.text
    assert got.value(name, answer="busy", reason="all_guarded") == 1, got.text
    assert got.value(name, answer="none", reason="pool_empty") == 1, got.text
    assert not [labels for labels, _ in got.samples[name] if ":" in labels["answer"]], got.text
