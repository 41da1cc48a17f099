"""PD pools in the config file: what `roles` becomes, and bad keys named by path."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, parse_config

BASE = """
modes:
  - name: s1
  - name: gb
    type: greybox
pools:
  - name: chat
    engine_type: vllm
    roles:
      prefill: ["10.0.0.1:8000", {id: p2, host: 10.0.0.2, port: 8000}]
      decode: ["[fd00::1]:8001"]
"""


def test_roles_become_two_role_pools_routing_the_pool_alias() -> None:
    config = parse_config(BASE)
    pools = {p.name: p for p in config.pools}
    assert set(pools) == {"chat@prefill", "chat@decode"}, list(pools)
    for role in ("prefill", "decode"):
        pool = pools[f"chat@{role}"]
        assert (pool.role, pool.pd_pool, pool.model) == (role, "chat", "chat")
        assert config.pool_source(pool) == "pd"
        assert config.mode_for(pool).type == "least_load", config.mode_for(pool)
    assert config.configured_alias("chat") is not None
    assert config.modes[0].name == "s1"  # the default mode of other pools is unchanged


def test_strategies_per_role_and_the_seed_weights() -> None:
    config = parse_config(BASE + """    pd:
      strategy: weighted
      decode_strategy: gb
      load_weight: 0.7
      kv_cache_weight: 0.2
      latency_weight: 0.1
""")
    prefill, decode = (next(p for p in config.pools if p.role == r)
                       for r in ("prefill", "decode"))
    mode = config.mode_for(prefill)
    assert (mode.type, mode.weighted.load_weight, mode.weighted.kv_cache_weight,
            mode.weighted.latency_weight) == ("weighted", 0.7, 0.2, 0.1), mode
    assert config.mode_for(decode).name == "gb"


def test_pool_mode_is_the_default_strategy_of_both_roles() -> None:
    config = parse_config(BASE.replace("    roles:", "    mode: gb\n    roles:"))
    assert {config.mode_for(p).name for p in config.pools} == {"gb"}


def test_an_f5_config_keeps_pd_pools_static() -> None:
    config = parse_config("f5: {host: 10.1.1.1}\n" + BASE)
    assert {config.pool_source(p) for p in config.pools} == {"pd"}


def test_empty_roles_wait_for_registrations() -> None:
    config = parse_config("pools:\n  - {name: x, engine_type: vllm, roles: {}}\n")
    assert [p.name for p in config.pools] == ["x@prefill", "x@decode"]


@pytest.mark.parametrize(("change", "path", "words"), [
    (("    roles:", "    pd: {strategy: fastest}\n    roles:"), "pools[0].pd.strategy",
     "unknown strategy 'fastest'"),
    (('"[fd00::1]:8001"', '"nohost"'), "pools[0].roles.decode[0]", "host:port"),
    (('"[fd00::1]:8001"', "{id: p2, host: h, port: 1}"), "pools[0].roles.decode[0].id",
     "duplicate instance id 'p2'"),
    (("port: 8000}", "port: 70000}"), "pools[0].roles.prefill[1].port", "1..65535"),
    (("    roles:", "    source: f5\n    roles:"), "pools[0].source", "not from F5"),
    (("    roles:", "    role: prefill\n    roles:"), "pools[0].role", "not by hand"),
    (("    roles:", "    members: ['1.2.3.4:5']\n    roles:"), "pools[0].members",
     "roles.prefill"),
    (("    roles:", "    pd: {health_check_interval: 0}\n    roles:"),
     "pools[0].pd.health_check_interval", "> 0"),
    (("    roles:", "    pd: {health_failure_threshold: 0}\n    roles:"),
     "pools[0].pd.health_failure_threshold", ">= 1"),
    (("    roles:", "    pd: {max_retries: 11}\n    roles:"), "pools[0].pd.max_retries",
     "0..10"),
    (("    roles:", "    pd: {strategy: weighted, load_weight: 0, kv_cache_weight: 0, "
                     "latency_weight: 0}\n    roles:"), "pools[0].pd.load_weight",
     "weight > 0"),
    (("    roles:", "    pd: {colour: red}\n    roles:"), "pools[0].pd", "colour"),
    (("      decode:", "      mixed:"), "pools[0].roles", "mixed"),
    (("name: chat", "name: chat@x"), "pools[0].name", "may not contain '@'"),
])
def test_bad_pd_keys_are_named(change: tuple[str, str], path: str, words: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE, change
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.path == path, info.value
    assert words in info.value.message, info.value


def test_a_configured_pool_may_not_take_a_role_pool_name() -> None:
    text = BASE + "  - {name: chat@decode, engine_type: vllm, source: static, " \
        "members: ['1.1.1.1:1']}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.path == "pools[1].name", info.value
    assert "role pool" in info.value.message, info.value
