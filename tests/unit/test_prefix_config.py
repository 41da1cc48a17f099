"""Cache-aware config keys: defaults, and errors that name the key path."""

from __future__ import annotations

import pytest

from services.api.validation import decode_select
from shared.config import ConfigError, parse_config
from shared.errors import BadRequest
from shared.prefix_config import expand_endpoint

GOOD = """
modes:
  - name: ca
    type: cache_aware
    cache_aware: {source: precise, member_cache_tokens: 35200,
                  session: {header: X-Session-ID}}
pools:
  - name: chat
    engine_type: vllm
    source: static
    members: ["10.0.0.1:8000"]
    mode: ca
    tokenizer: /models/llama/tokenizer.json
    kv_events: {endpoint: "tcp://{host}:5557", replay: "tcp://{host}:5558"}
"""


def test_a_cache_aware_config_loads() -> None:
    config = parse_config(GOOD)
    mode = config.modes[0]
    assert mode.type == "cache_aware" and mode.cache_aware.source == "precise"
    assert mode.cache_aware.session is not None
    kv = config.pools[0].kv_events
    assert kv is not None and kv.block_size == 16 and not kv.bind
    assert config.pools[0].tokenizer == "/models/llama/tokenizer.json"


@pytest.mark.parametrize(("patch", "path"), [
    (("source: precise", "source: exact"), "modes[0].cache_aware.source"),
    (("member_cache_tokens: 35200", "member_cache_tokens: 0"),
     "modes[0].cache_aware.member_cache_tokens"),
    (("member_cache_tokens: 35200", "member_cache_tokens: 35200, warm_inflight_factor: 0.5"),
     "modes[0].cache_aware.warm_inflight_factor"),
    (("session: {header: X-Session-ID}", "session: {header: null, body_field: null}"),
     "modes[0].cache_aware.session"),
    (('endpoint: "tcp://{host}:5557"', 'endpoint: "http://{host}:5557"'),
     "pools[0].kv_events.endpoint"),
    (('replay: "tcp://{host}:5558"', 'replay: "tcp://{hostname}:5558"'),
     "pools[0].kv_events.replay"),
    (("kv_events: {", "kv_events: {block_size: 0, "), "pools[0].kv_events.block_size"),
])
def test_bad_values_name_their_key(patch: tuple[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace(*patch))
    assert err.value.path == path, str(err.value)


def test_endpoint_templates() -> None:
    assert expand_endpoint("tcp://{host}:{port+1000}", "10.0.0.5", 8001) == \
        "tcp://10.0.0.5:9001"
    assert expand_endpoint("tcp://{host}:5557", "fd00::7", 8000) == "tcp://[fd00::7]:5557"


def test_select_body_prefix_fields_are_checked() -> None:
    body = decode_select(b'{"pool_name": "p", "members": ["10.0.0.1:80"], '
                         b'"prefix_key": "t-1", "prefix_hashes": [1, 2], "session": "u"}')
    assert body.prefix_key == "t-1" and body.prefix_hashes == [1, 2] and body.session == "u"
    for bad, field in ((b'"prefix_hashes": [-1]', "prefix_hashes"),
                       (b'"prefix_hashes": "x"', "prefix_hashes"),
                       (b'"prefix_key": "' + b"k" * 2000 + b'"', "prefix_key")):
        with pytest.raises(BadRequest) as err:
            decode_select(b'{"pool_name": "p", "members": [], ' + bad + b"}")
        assert err.value.field == field and err.value.status == 400, err.value.message
