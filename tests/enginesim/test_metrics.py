"""/metrics against the captured vLLM exposition: families, HELP, types, labels, counters."""

from __future__ import annotations

import re

import httpx

from services.enginesim.launcher import RunningEngine
from services.enginesim.promtext import fmt_labels, fmt_value
from tests.enginesim.conftest import fixture_json, fixture_text

_SAMPLE = re.compile(r"^([^{ ]+)(\{[^}]*\})? (\S+)$")


def headers_of(text: str) -> list[str]:
    """``# HELP`` / ``# TYPE`` lines in order."""
    return [line for line in text.splitlines() if line.startswith("#")]


def samples(text: str) -> dict[str, float]:
    """Sample line → value, keyed by name and labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"malformed sample line: {line!r}"
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def label_keys(text: str, prefix: str) -> set[tuple[str, frozenset[str]]]:
    """(sample name, label keys) for samples starting with ``prefix``."""
    keys = set()
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, rest = line.partition("{")
            labels = frozenset(re.findall(r'(\w+)="', rest)) if rest else frozenset()
            keys.add((name.split(" ")[0], labels))
    return keys


async def _scrape(engine: RunningEngine) -> httpx.Response:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        return await http.get("/metrics")


async def test_idle_metrics_have_vllms_families_and_labels(engine: RunningEngine) -> None:
    reply = await _scrape(engine)
    captured = fixture_text("metrics_idle.prom")
    ours = reply.text
    assert reply.headers["content-type"] == fixture_json("vllm_headers.json")["metrics_idle"][
        "content-type"]
    vllm_headers = [h for h in headers_of(captured) if "vllm:" in h]
    assert [h for h in headers_of(ours) if "vllm:" in h] == vllm_headers
    assert label_keys(ours, "vllm:") == label_keys(captured, "vllm:")
    assert [h for h in headers_of(ours) if h.startswith(("# HELP python", "# HELP process"))] == [
        h for h in headers_of(captured) if h.startswith(("# HELP python", "# HELP process"))]
    values = samples(ours)
    assert values['vllm:num_requests_running{engine="0",model_name="tiny"}'] == 0.0
    assert values['vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="awake"}'] == 1
    assert values['vllm:prefix_cache_queries_total{engine="0",model_name="tiny"}'] == 0.0
    assert values['vllm:prefix_cache_queries_created{engine="0",model_name="tiny"}'] > 1.7e9


async def test_counters_and_histograms_move_with_traffic(engine: RunningEngine) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "same prefix " * 40}],
            "max_tokens": 4}
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        for _ in range(3):
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        await http.get("/v1/models")
        await http.get("/nope")
        text = (await http.get("/metrics")).text
    values = samples(text)
    base = '{engine="0",model_name="tiny"}'
    assert values[f"vllm:generation_tokens_total{base}"] == 12
    assert values[f"vllm:prompt_tokens_total{base}"] == 3 * 84
    assert values[f"vllm:prefix_cache_queries_total{base}"] == 3 * 84
    assert values[f"vllm:prefix_cache_hits_total{base}"] == 2 * 80
    assert values[f"vllm:time_to_first_token_seconds_count{base}"] == 3
    assert values['vllm:request_success_total{engine="0",finished_reason="length",'
                  'model_name="tiny"}'] == 3
    assert values[f"vllm:inter_token_latency_seconds_count{base}"] == 9
    assert values['vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",'
                  'model_name="tiny"}'] == 3
    assert values['http_requests_total{handler="/v1/chat/completions",method="POST",'
                  'status="2xx"}'] == 3
    assert values['http_requests_total{handler="none",method="GET",status="4xx"}'] == 1
    assert 'http_requests_total{handler="/metrics"' not in text
    captured = fixture_text("metrics_after_sleep.prom")
    http_headers = [h for h in headers_of(captured) if h.split(" ")[2].startswith("http_")]
    assert [h for h in headers_of(text) if h.split(" ")[2].startswith("http_")] == http_headers


def test_value_and_label_formatting_is_prometheus_clients() -> None:
    assert fmt_value(0) == "0.0"
    assert fmt_value(1795353692.8099477) == "1.7953536928099477e+09"
    assert fmt_value(712294400.0) == "7.122944e+08"
    assert fmt_value(22.902995109558105) == "22.902995109558105"
    assert fmt_value(float("inf")) == "+Inf"
    assert fmt_labels({"model_name": "tiny", "le": "0.1", "engine": "0"}) == (
        '{engine="0",le="0.1",model_name="tiny"}')
    assert fmt_labels({"a": 'q"\\\n'}) == '{a="q\\"\\\\\\n"}'
