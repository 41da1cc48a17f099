"""The pure parts of PD pools: who the members are, health thresholds, the two request bodies."""

from __future__ import annotations

import json

import pytest

from services.api.gateway.body import parse_request
from services.api.gateway.pd import PREFILL_KV, decode_body, prefill_body
from shared.config import parse_config
from shared.pd_config import PDSettings
from shared.pd_health import advance
from shared.pd_members import WorkerMember, members_of
from shared.pd_registry import HealthRecord, PDMemberRecord

POOL = parse_config("""
pools:
  - name: chat
    engine_type: vllm
    roles:
      prefill: [{id: p1, host: 10.0.0.1, port: 8000}]
      decode: ["10.0.0.2:8000"]
""").pools[0]


def _ids(records: dict[str, PDMemberRecord], workers: list[WorkerMember] | None = None
         ) -> dict[str, tuple[str, str, str]]:
    return {m.id: (m.role, m.key, m.state) for m in members_of(POOL, records, workers or [])}


@pytest.mark.parametrize(("records", "expected"), [
    ({}, {"p1": ("prefill", "10.0.0.1:8000", "active"),
          "10.0.0.2:8000": ("decode", "10.0.0.2:8000", "active")}),
    # registered through the API: added
    ({"d9": PDMemberRecord(id="d9", role="decode", host="10.0.0.9", port=1)},
     {"p1": ("prefill", "10.0.0.1:8000", "active"),
      "10.0.0.2:8000": ("decode", "10.0.0.2:8000", "active"),
      "d9": ("decode", "10.0.0.9:1", "active")}),
    # a file member drained, the other removed
    ({"p1": PDMemberRecord(id="p1", role="prefill", host="x", port=1, origin="config",
                           state="draining"),
      "10.0.0.2:8000": PDMemberRecord(id="10.0.0.2:8000", role="decode", host="x", port=1,
                                      origin="config", state="removed")},
     {"p1": ("prefill", "10.0.0.1:8000", "draining")}),
    # an API record takes over a file member's id
    ({"p1": PDMemberRecord(id="p1", role="prefill", host="10.0.0.7", port=9)},
     {"p1": ("prefill", "10.0.0.7:9", "active"),
      "10.0.0.2:8000": ("decode", "10.0.0.2:8000", "active")}),
    # the state of a member that left the file is moot
    ({"gone": PDMemberRecord(id="gone", role="decode", host="x", port=1, origin="config",
                             state="draining")},
     {"p1": ("prefill", "10.0.0.1:8000", "active"),
      "10.0.0.2:8000": ("decode", "10.0.0.2:8000", "active")}),
])
def test_members_of(records: dict[str, PDMemberRecord],
                    expected: dict[str, tuple[str, str, str]]) -> None:
    assert _ids(records) == expected


def test_worker_instances_join_with_their_role() -> None:
    got = _ids({}, [WorkerMember("chat", "both", "10.0.1.1", 7000),
                    WorkerMember("chat-r2", "decode", "10.0.1.2", 7000, "draining")])
    assert got["chat"] == ("both", "10.0.1.1:7000", "active")
    assert got["chat-r2"] == ("decode", "10.0.1.2:7000", "draining")


SETTINGS = PDSettings(health_failure_threshold=3, health_success_threshold=2)


@pytest.mark.parametrize(("checks", "healthy"), [
    ([None], True),                                  # first check decides at once
    (["down"], False),
    ([None, "down", "down"], True),                  # 2 failures < 3
    ([None, "down", "down", "down"], False),
    ([None, "down", None, "down", "down"], True),    # a success resets the count
    (["down", None], False),                         # 1 success < 2
    (["down", None, None], True),
    (["down", None, "down", None], False),
])
def test_health_thresholds(checks: list[str | None], healthy: bool) -> None:
    record: HealthRecord | None = None
    for i, error in enumerate(checks):
        record = advance(record, error, float(i), SETTINGS)
    assert record is not None and record.healthy is healthy, record


CHAT = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 50, "max_completion_tokens": 50, "min_tokens": 5,
                   "stream": True, "stream_options": {"include_usage": True},
                   "temperature": 0.2}).encode()


def test_the_prefill_body_is_one_token_unstreamed_keeping_the_kv() -> None:
    body = json.loads(prefill_body(parse_request(CHAT, "chat"), "tiny"))
    assert body["max_tokens"] == 1 and body["max_completion_tokens"] == 1
    assert body["stream"] is False and "stream_options" not in body
    assert "min_tokens" not in body
    assert body["kv_transfer_params"] == PREFILL_KV
    assert body["model"] == "tiny" and body["temperature"] == 0.2


def test_the_decode_body_is_the_clients_with_the_prefills_kv_params() -> None:
    params = {"do_remote_prefill": True, "remote_block_ids": [1, 2]}
    body = json.loads(decode_body(parse_request(CHAT, "chat"), None, params))
    assert body["max_tokens"] == 50 and body["stream"] is True and body["min_tokens"] == 5
    assert body["stream_options"] == {"include_usage": True}
    assert body["kv_transfer_params"] == params and body["model"] == "chat"
    smuggled = json.dumps({"model": "chat", "prompt": "x",
                           "kv_transfer_params": {"do_remote_prefill": True}}).encode()
    assert "kv_transfer_params" not in json.loads(
        decode_body(parse_request(smuggled, "completions"), None, None))
