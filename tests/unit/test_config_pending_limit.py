"""``scheduler.pending_msgs_limit``: how many unread messages a replica's event
subscription holds before its NATS client drops the next ones."""

from __future__ import annotations

import pytest
from nats.aio.subscription import DEFAULT_SUB_PENDING_MSGS_LIMIT

from shared.config import ConfigError, parse_config


def test_default_is_nats_py_s_own() -> None:
    assert parse_config("").scheduler.pending_msgs_limit == DEFAULT_SUB_PENDING_MSGS_LIMIT


def test_a_value_is_kept() -> None:
    assert parse_config("scheduler:\n  pending_msgs_limit: 50\n").scheduler \
        .pending_msgs_limit == 50


@pytest.mark.parametrize(("value", "fragment"), [
    ("0", "must be > 0"), ("-5", "must be > 0"), ("1.5", "Expected `int`"),
    ("lots", "Expected `int`"), ("true", "Expected `int`")])
def test_bad_values_name_the_key(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"scheduler:\n  pending_msgs_limit: {value}\n")
    assert caught.value.path == "scheduler.pending_msgs_limit", caught.value
    assert fragment in caught.value.message, caught.value
