"""The seed's scheduler_config.json: loaded unchanged as a PD pool; bad keys named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.pd.seed import check_seed, load_seed, seed_pool
from shared.config import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pd"


def _doc(seed_path: Path) -> dict[str, Any]:
    seed, _ = load_seed(seed_path)
    return {"pools": [seed_pool(seed, pool="pd", model="tiny")]}


def test_the_seeds_example_loads_unchanged_with_the_seeds_defaults() -> None:
    seed, unknown = load_seed(FIXTURES / "scheduler_config.example.json")
    assert unknown == []
    assert (seed.strategy, seed.health_check_interval, seed.health_check_timeout,
            seed.max_retries, seed.drain_timeout) == ("least_load", 5.0, 2.0, 3, 30.0)
    config = check_seed(seed, {"pools": [seed_pool(seed, pool="pd", model="tiny")]})
    roles = {p.role: p for p in config.pools}
    assert set(roles) == {"prefill", "decode"}
    assert roles["prefill"].roles is not None
    assert [e.id for e in roles["prefill"].roles.prefill] == ["prefill-0"]  # type: ignore
    assert config.mode_for(roles["decode"]).type == "least_load"


def test_every_key_of_the_seeds_table_is_honoured() -> None:
    seed, _ = load_seed(FIXTURES / "scheduler_config.full.json")
    config = check_seed(seed, _doc(FIXTURES / "scheduler_config.full.json"))
    pool = config.pools[0]
    assert (pool.pd.max_retries, pool.pd.drain_timeout, pool.pd.health_check_timeout) == (
        3, 30.0, 2.0)
    weights = config.mode_for(pool).weighted
    assert (config.mode_for(pool).type, weights.load_weight, weights.kv_cache_weight,
            weights.latency_weight) == ("weighted", 0.5, 0.3, 0.2)


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"strategy": "fastest"}, "strategy", "unknown strategy"),
    ({"health_check_interval": "often"}, "health_check_interval", "Expected `float`"),
    ({"health_check_interval": 0}, "health_check_interval", "> 0"),
    ({"max_retries": -1}, "max_retries", "0..10"),
    ({"drain_timeout": -5}, "drain_timeout", ">= 0"),
    ({"prefill_instances": [{"id": "p", "host": "h"}]}, "prefill_instances[0]", "port"),
    ({"decode_instances": [{"id": "d", "host": "h", "port": 0}]}, "decode_instances[0].port",
     "1..65535"),
    ({"decode_instances": [{"id": "prefill-0", "host": "h", "port": 1}]},
     "decode_instances[0].id", "duplicate instance id"),
])
def test_a_bad_seed_file_names_the_key(tmp_path: Path, change: dict[str, Any], path: str,
                                       words: str) -> None:
    doc = json.loads((FIXTURES / "scheduler_config.example.json").read_text())
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({**doc, **change}))
    with pytest.raises(ConfigError) as info:
        seed, _ = load_seed(file)
        check_seed(seed, {"pools": [seed_pool(seed, pool="pd", model="m")]})
    assert info.value.path == path, info.value
    assert words in info.value.message, info.value


def test_keys_the_seed_does_not_know_are_reported_not_fatal(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "scheduler_config.example.json").read_text())
    file = tmp_path / "extra.json"
    file.write_text(json.dumps({**doc, "colour": "red"}))
    assert load_seed(file)[1] == ["colour"]


def test_not_json_is_one_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "x.json"
    file.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_seed(file)
