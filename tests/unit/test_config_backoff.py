"""``scheduler.pool_fetch_backoff_max``: the longest wait between F5 fetches while F5 fails."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, parse_config


def test_default_is_twice_the_fetch_interval() -> None:
    scheduler = parse_config("scheduler:\n  pool_fetch_interval: 7\n").scheduler
    assert scheduler.pool_fetch_backoff_max is None
    assert scheduler.effective_pool_fetch_backoff_max == 14
    assert parse_config("").scheduler.effective_pool_fetch_backoff_max == 20


def test_explicit_value_wins() -> None:
    text = "scheduler:\n  pool_fetch_interval: 10\n  pool_fetch_backoff_max: 5\n"
    assert parse_config(text).scheduler.effective_pool_fetch_backoff_max == 5


@pytest.mark.parametrize(("value", "fragment"), [
    ("0", "must be > 0"), ("-1", "must be > 0"), ("soon", "Expected `float | null`")])
def test_bad_values_name_the_key(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"scheduler:\n  pool_fetch_backoff_max: {value}\n")
    assert caught.value.path == "scheduler.pool_fetch_backoff_max", caught.value
    assert fragment in caught.value.message, caught.value
