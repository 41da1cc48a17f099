"""Config loading: seed files unchanged, errors naming the key path, reload diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, LoadedConfig, load_config, parse_config
from shared.config_watch import describe_changes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "config"


def test_seed_full_example_loads_unchanged() -> None:
    cfg = load_config(FIXTURES / "seed_full_example.yaml").config
    assert cfg.global_.interval == 5 and cfg.global_.api_port == 8080
    assert cfg.f5 is not None and cfg.f5.host == "192.168.1.100"
    assert cfg.scheduler.metrics_fetch_interval == 3000
    assert cfg.modes[0].w_a == 0.8
    p1, p2 = cfg.pools
    assert (p1.name, p1.engine_type, p1.metrics.timeout) == ("llm-pool-1", "vllm", 4)
    assert p1.metrics.bearer() == "your-api-key"
    assert (p2.partition, p2.metrics.port, p2.metrics.schema) == ("tenant-1", 9090, "https")
    assert cfg.pool_source(p1) == "f5"


def test_seed_fallback_example_loads_with_defaults() -> None:
    cfg = load_config(FIXTURES / "seed_fallback_example.yaml").config
    assert cfg.global_.effective_log_level == "DEBUG"
    assert cfg.pools[1].fallback.member_waiting_queue_threshold is None
    assert cfg.pools[2].fallback.pool_fallback is True
    assert cfg.global_.interval == 60 and cfg.scheduler.metrics_fetch_interval is None
    # Unset: the seed's 1000 ms for large pools, 10 Hz for small ones.
    assert cfg.scrape_interval_s(17) == 1.0 and cfg.scrape_interval_s(16) == 0.1
    assert cfg.stale_after_s(4) == 0.1 * cfg.scheduler.stale_after_intervals


@pytest.mark.parametrize(("text", "path", "fragment"), [
    ("global:\n  api_port: x\n", "global.api_port", "Expected `int`"),
    ("global:\n  api_port: 70000\n", "global.api_port", "1..65535"),
    ("global:\n  log_level: LOUD\n", "global.log_level", "must be one of"),
    ("global:\n  nosuch: 1\n", "global", "unknown field `nosuch`"),
    ("gateway:\n  decide: fast\n", "gateway.decide", "Invalid enum value 'fast'"),
    ("gateway:\n  hold_next_try_ms: -1\n", "gateway.hold_next_try_ms", "0..1000"),
    ("pools:\n - name: a\n", "pools[0]", "missing required field `engine_type`"),
    ("pools:\n - name: a\n   engine_type: trt\n", "pools[0].engine_type", "unknown engine"),
    ("pools:\n - name: a\n   engine_type: vllm\n   source: f5\n", "pools[0].source",
     "needs an `f5:` section"),
    ("pools:\n - name: a\n   engine_type: vllm\n   source: static\n", "pools[0].members",
     "at least one member"),
    ("pools:\n - name: a\n   engine_type: vllm\n   members: ['1.2.3.4']\n",
     "pools[0].members[0]", "host:port"),
    ("pools:\n - name: a\n   engine_type: vllm\n   members: ['fd00::1:80']\n",
     "pools[0].members[0]", "[addr]:port"),
    ("pools:\n - name: a\n   engine_type: vllm\n   mode: s9\n", "pools[0].mode", "no mode"),
    ("pools:\n - name: a\n   engine_type: vllm\n - name: a\n   engine_type: vllm\n",
     "pools[1].name", "duplicate pool"),
    ("pools:\n - name: a\n   engine_type: vllm\n   metrics: {timeout: 0}\n",
     "pools[0].metrics.timeout", "> 0"),
    ("pools:\n - name: a\n   engine_type: vllm\n   fallback:\n"
     "     member_running_req_threshold: -1\n",
     "pools[0].fallback.member_running_req_threshold", ">= 0"),
    ("scheduler:\n  metrics_fetch_interval: 0\n", "scheduler.metrics_fetch_interval", "> 0"),
    ("global: [unclosed\n", "", "not valid YAML"),
])
def test_errors_name_the_key_path(text: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.path == path
    assert fragment in str(info.value)


def test_custom_engine_is_data_not_code() -> None:
    cfg = parse_config(
        "engines:\n  trt:\n    waiting_queue: [trt:queue]\n    running_req: [trt:running]\n"
        "    cache_usage: [trt:kv_pct]\n    cache_usage_scale: 0.01\n"
        "pools:\n - name: a\n   engine_type: trt\n   members: ['1.2.3.4:80']\n")
    spec = cfg.engine_spec(cfg.pools[0])
    assert spec.waiting_queue == ["trt:queue"] and spec.cache_usage_scale == 0.01


def test_reload_diff_names_pool_and_value_and_masks_secrets() -> None:
    base = ("pools:\n - name: production_pool\n   engine_type: vllm\n"
            "   metrics: {APIkey: old}\n   fallback: {pool_fallback: false}\n")
    new = base.replace("pool_fallback: false", "pool_fallback: true").replace("old", "new")
    old_l = LoadedConfig(config=parse_config(base), version="a", path="x")
    new_l = LoadedConfig(config=parse_config(new), version="b", path="x")
    lines = describe_changes(old_l, new_l)
    assert "Updated Pool production_pool:Common pool_fallback: True" in lines
    assert any("APIkey" in line and "***" in line for line in lines)
    assert not any("new" in line.split(":")[-1] for line in lines if "APIkey" in line)
