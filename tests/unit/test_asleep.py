"""Asleep engines: the mapping's signals on real payloads, the view's memory, the candidates."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from services.collector.asleep import AsleepTracker
from services.collector.extract import Extracted, extract, wanted_names
from shared.config import ConfigError, PoolConfig, parse_config
from shared.engines import BUILTIN_ENGINES, AsleepSignal, EngineMetricsSpec
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch, PoolSnapshot
from shared.promparse import parse_selected
from shared.scheduling.decide import candidates
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import ClusterView, MemberState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
VLLM = BUILTIN_ENGINES["vllm"]
SGLANG = BUILTIN_ENGINES["sglang"]
VLLM_ASLEEP = "vllm:engine_sleep_state{sleep_state=awake}=0"


def from_text(text: str, spec: EngineMetricsSpec) -> Extracted:
    return extract(parse_selected(text, wanted_names(spec)), spec)


def fixture(path: str) -> str:
    return (FIXTURES / path).read_text(encoding="utf-8")


@pytest.mark.parametrize(("path", "spec", "reason"), [
    ("enginesim/metrics_after_sleep.prom", VLLM, VLLM_ASLEEP),
    ("enginesim/metrics_idle.prom", VLLM, None),
    ("metrics/vllm-0.32.0-idle.txt", VLLM, None),
    ("metrics/vllm-0.32.0-two-engines.txt", VLLM, None),
    ("metrics/vllm-0.32.0-during-load.txt", VLLM, None),
    ("metrics/vllm-0.6-gpu-cache.txt", VLLM, None),   # no engine_sleep_state: no signal
    ("metrics/sglang.txt", SGLANG, None),
])
def test_asleep_on_real_payloads(path: str, spec: EngineMetricsSpec, reason: str | None) -> None:
    got = from_text(fixture(path), spec)
    assert got.asleep_reason == reason, got
    assert got.found, "load figures are still read next to the sleep signal"


def test_vllm_0_32_sample_line_alone() -> None:
    text = 'vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="awake"} 0.0\n'
    assert from_text(text, VLLM).asleep_reason == VLLM_ASLEEP
    awake = text.replace("} 0.0", "} 1.0")
    assert from_text(awake, VLLM).asleep_reason is None


def test_one_sleeping_engine_of_two_is_enough() -> None:
    text = fixture("metrics/vllm-0.32.0-two-engines.txt").replace(
        'vllm:engine_sleep_state{engine="1",model_name="tiny",sleep_state="awake"} 1.0',
        'vllm:engine_sleep_state{engine="1",model_name="tiny",sleep_state="awake"} 0.0')
    assert from_text(text, VLLM).asleep_reason == VLLM_ASLEEP


def test_only_wanted_names_are_parsed() -> None:
    assert "vllm:engine_sleep_state" in wanted_names(VLLM)
    assert not any("sleep" in name for name in wanted_names(SGLANG))


CUSTOM = EngineMetricsSpec(
    waiting_queue=["q"], running_req=["r"], cache_usage=["u"],
    asleep=[AsleepSignal(metric="engine_paused", when="nonzero"),
            AsleepSignal(metric="engine_state", labels={"state": "ready", "gpu": "0"},
                         when="zero")])


@pytest.mark.parametrize(("text", "reason"), [
    ("q 0\nengine_paused 0\n", None),
    ("q 0\nengine_paused 2\n", "engine_paused=2"),
    ("q 0\nengine_paused NaN\n", None),
    ('q 0\nengine_state{state="ready",gpu="0",host="a"} 0\n', "engine_state{state=ready,gpu=0}=0"),
    ('q 0\nengine_state{state="ready",gpu="1"} 0\n', None),          # labels must all match
    ('q 0\nengine_state{state="ready"} 0\n', None),
    ('q 0\nengine_state{state="ready",gpu="0"} 1\n', None),
    ("q 0\n", None),                                                  # absent: awake
])
def test_custom_signals(text: str, reason: str | None) -> None:
    assert from_text(text, CUSTOM).asleep_reason == reason


def test_config_declares_signals_and_probe_per_engine_type() -> None:
    config = parse_config("""
engines:
  old-vllm:
    waiting_queue: [vllm:num_requests_waiting]
    running_req: [vllm:num_requests_running]
    cache_usage: [vllm:gpu_cache_usage_perc]
    asleep:
      - {metric: "engine_paused"}
      - {metric: "vllm:engine_sleep_state", labels: {sleep_state: awake}, when: zero}
    asleep_probe: {path: /is_sleeping, field: is_sleeping}
pools:
  - {name: p, engine_type: old-vllm, source: static, members: ["10.0.0.1:8000"]}
""")
    spec = config.engine_spec(config.pools[0])
    assert spec.asleep[0] == AsleepSignal(metric="engine_paused", when="nonzero")
    assert spec.asleep[1].labels == {"sleep_state": "awake"}
    assert spec.asleep_probe is not None and spec.asleep_probe.path == "/is_sleeping"
    assert BUILTIN_ENGINES["vllm"].asleep_probe is None


@pytest.mark.parametrize(("entry", "where", "says"), [
    ("asleep: [{metric: x, when: sometimes}]", "asleep[0].when", "'sometimes'"),
    ("asleep: [{metric: x, label: {a: b}}]", "asleep[0]", "`label`"),
    ("asleep_probe: {path: is_sleeping}", "asleep_probe.path", "'^/'"),
])
def test_bad_asleep_config_names_the_key(entry: str, where: str, says: str) -> None:
    text = ("engines:\n  e:\n    waiting_queue: [q]\n    running_req: [r]\n"
            f"    cache_usage: [u]\n    {entry}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    # msgspec names a dict entry's key as [...]
    assert info.value.path == f"engines[...].{where}", str(info.value)
    assert says in info.value.message, str(info.value)


def metrics(key: str, at: float, *, ok: bool = True, asleep: bool = False,
            reason: str | None = None) -> MemberMetrics:
    return MemberMetrics(key=key, scraped_at=at, ok=ok, error=None if ok else "timeout",
                         waiting_queue=0.0 if ok else None, running_req=0.0 if ok else None,
                         cache_usage=0.1 if ok else None, asleep=asleep, asleep_reason=reason)


def test_failed_scrape_keeps_asleep_until_a_scrape_says_awake() -> None:
    member = MemberState(key="a:1", host="a", port=1, available=True)
    assert member.apply(metrics("a:1", 1.0, asleep=True, reason=VLLM_ASLEEP))
    assert member.exclusion() == f"asleep: {VLLM_ASLEEP}"
    assert not member.apply(metrics("a:1", 2.0, ok=False))
    assert member.asleep and member.asleep_reason == VLLM_ASLEEP
    assert member.to_metrics().asleep, "the durable copy keeps it too"
    assert member.apply(metrics("a:1", 3.0))
    assert not member.asleep and member.exclusion() is None


def test_worker_signal_on_a_failed_scrape_counts() -> None:
    member = MemberState(key="a:1", host="a", port=1, available=True)
    assert member.apply(metrics("a:1", 1.0, ok=False, asleep=True, reason="worker w"))
    assert member.asleep and member.asleep_reason == "worker w"


def test_candidates_leave_asleep_members_out_and_log_why(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    view = ClusterView()
    view.apply_snapshot(PoolSnapshot(
        pool="p", partition="Common", engine_type="vllm", source="static", fetched_at=1.0,
        members=[MemberInfo(key=k, host="h", port=p) for k, p in (("h:1", 1), ("h:2", 2))]))
    changed: list[MemberState] = []
    view.apply_metrics(MetricsBatch(pool="p", partition="Common", round_started_at=1.0, members=[
        metrics("h:1", 1.0, asleep=True, reason=VLLM_ASLEEP), metrics("h:2", 1.0)]), changed)
    assert [m.key for m in changed] == ["h:1"]
    ctx = DecisionContext(pool="p", partition="Common", now=1.0, stale_after_s=3.0,
                          rng=random.Random(1), debug=True)
    with caplog.at_level(logging.DEBUG, logger="llmsched.scheduler.decide"):
        got = candidates(view.pools[("p", "Common")], ["h:1", "h:2"], ctx)
    assert [m.key for m in got] == ["h:2"]
    assert f"exclude h:1: asleep: {VLLM_ASLEEP}" in caplog.text, caplog.text


def test_tracker_adds_worker_signal_by_address_and_logs_changes_once(
        caplog: pytest.LogCaptureFixture) -> None:
    pool = PoolConfig(name="p", engine_type="sglang", source="static", members=["h:1"])
    members = [MemberInfo(key="node-a:8000", host="10.0.0.5", port=8000),
               MemberInfo(key="10.0.0.6:8000", host="10.0.0.6", port=8000)]
    sleeping = {"10.0.0.5:8000": "worker w1 reports instance chat sleeping"}
    tracker = AsleepTracker()

    def batch(at: float, ok: bool = True) -> MetricsBatch:
        return MetricsBatch(pool="p", partition="Common", round_started_at=at,
                            members=[metrics(m.key, at, ok=ok) for m in members])

    with caplog.at_level(logging.INFO, logger="llmsched.collector.asleep"):
        first = tracker.apply(pool, members, batch(1.0), sleeping)
        tracker.apply(pool, members, batch(2.0, ok=False), {})   # failed round: no change
        tracker.apply(pool, members, batch(3.0), sleeping)
        awake = tracker.apply(pool, members, batch(4.0), {})
    assert [(m.key, m.asleep, m.asleep_reason) for m in first.members] == [
        ("node-a:8000", True, sleeping["10.0.0.5:8000"]), ("10.0.0.6:8000", False, None)]
    assert not any(m.asleep for m in awake.members)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "pool p:Common: member node-a:8000 asleep (worker w1 reports instance chat sleeping);"
        " out of selection until awake",
        "pool p:Common: member node-a:8000 awake again; back in selection"], lines
