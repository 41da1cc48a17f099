"""Engine figures from parsed series: name preference, label series, NaN, scale, extras."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.collector.extract import Extracted, extract, wanted_names
from shared.engines import BUILTIN_ENGINES, EngineMetricsSpec
from shared.promparse import parse_selected

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
VLLM = BUILTIN_ENGINES["vllm"]
SGLANG = BUILTIN_ENGINES["sglang"]
VLLM_MEAN = EngineMetricsSpec(waiting_queue=VLLM.waiting_queue, running_req=VLLM.running_req,
                              cache_usage=VLLM.cache_usage, cache_usage_aggregate="mean")
SGLANG_MEAN = EngineMetricsSpec(waiting_queue=SGLANG.waiting_queue,
                                running_req=SGLANG.running_req, cache_usage=SGLANG.cache_usage,
                                cache_usage_aggregate="mean")


def from_fixture(name: str, spec: EngineMetricsSpec) -> Extracted:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return extract(parse_selected(text, wanted_names(spec)), spec)


FIXTURE_CASES = [
    ("vllm-0.32.0-idle.txt", VLLM, 0.0, 0.0, 0.0),
    ("vllm-0.32.0-during-load.txt", VLLM, 12.0, 8.0, 0.00207544866316689),
    ("vllm-0.32.0-kv-full.txt", VLLM, 13.0, 7.0, 1.0),
    ("vllm-0.6-gpu-cache.txt", VLLM, 4.0, 6.0, 0.4231),
    ("vllm-0.32.0-two-engines.txt", VLLM, 9.0, 8.0, 0.83),
    ("vllm-0.32.0-two-engines.txt", VLLM_MEAN, 9.0, 8.0, 0.72),
    ("sglang.txt", SGLANG, 3.0, 12.0, 0.28),
    # dp_rank 0 (tp 0,1: 3 queued, 4 running) + dp_rank 1 (tp 2,3: 11 queued, 6 running)
    ("sglang-dp2-tp2.txt", SGLANG, 14.0, 10.0, 0.77),
    ("sglang-dp2-tp2.txt", SGLANG_MEAN, 14.0, 10.0, 0.595),
]


@pytest.mark.parametrize(("name", "spec", "waiting", "running", "usage"), FIXTURE_CASES,
                         ids=[f"{case[0]}-{case[1].cache_usage_aggregate}"
                              for case in FIXTURE_CASES])
def test_fixture_figures(name: str, spec: EngineMetricsSpec, waiting: float, running: float,
                         usage: float) -> None:
    got = from_fixture(name, spec)
    assert got.found
    assert got.waiting_queue == waiting
    assert got.running_req == running
    assert got.cache_usage == pytest.approx(usage)


def test_vllm_extras_from_real_payload() -> None:
    got = from_fixture("vllm-0.32.0-during-load.txt", VLLM)
    assert got.extra == {
        "ttft_sum": pytest.approx(0.41726183891296387), "ttft_count": 11.0,
        "e2e_sum": pytest.approx(0.1509096622467041), "e2e_count": 3.0,
        "prefix_cache_queries": 2074.0, "prefix_cache_hits": 896.0, "preemptions": 0.0,
        "prefix_caching": 1.0, "itl_sum": pytest.approx(3.641594089000023),
        "itl_count": 742.0,
    }


def test_the_prefix_caching_setting_comes_from_the_info_labels() -> None:
    on = [({"enable_prefix_caching": "True", "block_size": "16"}, 1.0)]
    off = [({"enable_prefix_caching": "False", "block_size": "16"}, 1.0)]
    base: dict[str, list[tuple[dict[str, str], float]]] = {WAIT: [({}, 0.0)]}
    assert extract({**base, "vllm:cache_config_info": on}, VLLM).extra["prefix_caching"] == 1.0
    assert extract({**base, "vllm:cache_config_info": off}, VLLM).extra["prefix_caching"] == 0.0
    # An engine that does not say (no info series, or no such label): unknown, left out.
    assert "prefix_caching" not in extract(base, VLLM).extra
    assert "prefix_caching" not in extract(
        {**base, "vllm:cache_config_info": [({"block_size": "16"}, 1.0)]}, VLLM).extra


def test_extras_are_summed_over_engines() -> None:
    got = from_fixture("vllm-0.32.0-two-engines.txt", VLLM)
    assert got.extra["prefix_cache_queries"] == 2074.0 + 1500.0
    assert got.extra["ttft_count"] == 3.0 + 2.0
    assert got.extra["preemptions"] == 1.0


def test_sglang_extras() -> None:
    got = from_fixture("sglang.txt", SGLANG)
    assert got.extra["ttft_count"] == 72.0
    assert got.extra["e2e_sum"] == pytest.approx(60 * 3.0 + 12 * 7.0)
    assert got.extra["cache_hit_rate"] == pytest.approx(0.31)


def series(*rows: tuple[dict[str, str], float]) -> list[tuple[dict[str, str], float]]:
    return list(rows)


E0, E1 = {"engine": "0"}, {"engine": "1"}
NAN = math.nan
KV_NEW, KV_OLD = "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"
WAIT, RUN = "vllm:num_requests_waiting", "vllm:num_requests_running"

INLINE_CASES = [
    ("new KV name preferred over old", {KV_NEW: series((E0, 0.3)), KV_OLD: series((E0, 0.9))},
     VLLM, (None, None, 0.3)),
    ("old KV name alone is used", {KV_OLD: series((E0, 0.9))}, VLLM, (None, None, 0.9)),
    ("NaN new name falls back to old", {KV_NEW: series((E0, NAN)), KV_OLD: series((E0, 0.5))},
     VLLM, (None, None, 0.5)),
    ("NaN everywhere is missing", {KV_NEW: series((E0, NAN)), WAIT: series((E0, NAN))},
     VLLM, (None, None, None)),
    ("infinite count is missing", {WAIT: series((E0, math.inf))}, VLLM, (None, None, None)),
    ("NaN series skipped, others kept", {WAIT: series((E0, NAN), (E1, 4.0))},
     VLLM, (4.0, None, None)),
    ("counts summed over engines", {WAIT: series((E0, 2.0), (E1, 3.0)),
                                    RUN: series((E0, 1.0), (E1, 1.0))}, VLLM, (5.0, 2.0, None)),
    ("usage max over engines", {KV_NEW: series((E0, 0.2), (E1, 0.6))}, VLLM, (None, None, 0.6)),
    ("usage mean over engines", {KV_NEW: series((E0, 0.2), (E1, 0.6))}, VLLM_MEAN,
     (None, None, 0.4)),
    ("usage clamped high", {KV_NEW: series((E0, 1.7))}, VLLM, (None, None, 1.0)),
    ("usage clamped low", {KV_NEW: series((E0, -0.2))}, VLLM, (None, None, 0.0)),
    ("negative count clamped", {WAIT: series((E0, -1.0))}, VLLM, (0.0, None, None)),
    ("tensor-parallel copies counted once",
     {"sglang:num_queue_reqs": series(({"tp_rank": "0"}, 5.0), ({"tp_rank": "1"}, 5.0)),
      "sglang:num_running_reqs": series(({"tp_rank": "0", "pp_rank": "0"}, 2.0),
                                        ({"tp_rank": "0", "pp_rank": "1"}, 3.0))},
     SGLANG, (5.0, 3.0, None)),
    ("dp ranks summed, tp copies not",
     {"sglang:num_queue_reqs": series(({"dp_rank": "0", "tp_rank": "0"}, 1.0),
                                      ({"dp_rank": "0", "tp_rank": "1"}, 1.0),
                                      ({"dp_rank": "1", "tp_rank": "2"}, 4.0))},
     SGLANG, (5.0, None, None)),
    ("empty payload", {}, VLLM, (None, None, None)),
]


@pytest.mark.parametrize(("series_by_name", "spec", "expected"),
                         [case[1:] for case in INLINE_CASES], ids=[c[0] for c in INLINE_CASES])
def test_inline_cases(series_by_name: dict[str, list[tuple[dict[str, str], float]]],
                      spec: EngineMetricsSpec,
                      expected: tuple[float | None, float | None, float | None]) -> None:
    got = extract(series_by_name, spec)
    assert (got.waiting_queue, got.running_req, got.cache_usage) == pytest.approx(expected)
    assert got.found == any(value is not None for value in expected)


def test_custom_engine_mapping_with_percent_scale() -> None:
    spec = EngineMetricsSpec(
        waiting_queue=["trtllm_queue_len", "trtllm_pending"], running_req=["trtllm_active"],
        cache_usage=["trtllm_kv_pct"], cache_usage_scale=0.01,
        extra={"tokens": "trtllm_tokens_total"},
    )
    text = ("# TYPE trtllm_pending gauge\ntrtllm_pending 3\n"
            'trtllm_active{gpu="0"} 2\ntrtllm_active{gpu="1"} 2\n'
            'trtllm_kv_pct{gpu="0"} 55\ntrtllm_kv_pct{gpu="1"} 35\n'
            "trtllm_tokens_total 1e3\nvllm:num_requests_waiting 99\n")
    got = extract(parse_selected(text, wanted_names(spec)), spec)
    assert got == Extracted(waiting_queue=3.0, running_req=4.0, cache_usage=0.55,
                            extra={"tokens": 1000.0})


def test_extra_missing_or_nan_is_left_out() -> None:
    spec = EngineMetricsSpec(waiting_queue=["w"], running_req=["r"], cache_usage=["u"],
                             extra={"a": "x_sum", "b": "y_sum"})
    got = extract({"w": [({}, 1.0)], "y_sum": [({}, NAN)]}, spec)
    assert got.extra == {}
    assert got.waiting_queue == 1.0


def test_wanted_names_cover_every_field() -> None:
    assert wanted_names(VLLM) >= {WAIT, RUN, KV_NEW, KV_OLD,
                                  "vllm:time_to_first_token_seconds_sum"}
