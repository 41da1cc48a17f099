"""F5 JSON → members, pools, login token and error bodies, on recorded-shape fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.collector.f5_parse import (
    ErrorBody,
    F5PayloadError,
    LoginToken,
    is_available,
    is_not_registered,
    is_pool_not_found,
    list_pool_names,
    member_port,
    parse_error_body,
    parse_login,
    parse_member,
    parse_members,
    strip_route_domain,
)
from shared.messages import MemberInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "f5"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "tm:ltm:pool:members:membersstate",
        "name": "10.0.0.1:8000",
        "address": "10.0.0.1",
        "state": "up",
        "session": "monitor-enabled",
    }
    base.update(fields)
    return base


# name → (key, host, port, available, state, session) for every real endpoint in the fixture
EXPECTED_MEMBERS = {
    "10.20.0.11:8000": ("10.20.0.11:8000", "10.20.0.11", 8000, False, "down", "monitor-enabled"),
    "10.20.0.12:8000": ("10.20.0.12:8000", "10.20.0.12", 8000, True, "up", "monitor-enabled"),
    "_auto_10.20.5.7:8000": ("10.20.5.7:8000", "10.20.5.7", 8000, True, "up", "monitor-enabled"),
    "_auto_fd00.20..7:8000": (
        "[fd00:20::7]:8000", "fd00:20::7", 8000, False, "checking", "monitor-enabled"),
    "fd00:20::21.8000": ("[fd00:20::21]:8000", "fd00:20::21", 8000, True, "up", "monitor-enabled"),
    "10.1.1.5%2:8000": ("10.1.1.5:8000", "10.1.1.5", 8000, True, "up", "monitor-enabled"),
    "gpu-node-a:8001": ("10.20.0.31:8001", "10.20.0.31", 8001, True, "unchecked", "user-enabled"),
    "10.20.0.13:8000": ("10.20.0.13:8000", "10.20.0.13", 8000, False, "up", "user-disabled"),
    "10.20.0.14:8000": ("10.20.0.14:8000", "10.20.0.14", 8000, False, "user-down", "user-disabled"),
}


def test_collection_fixture_maps_every_endpoint() -> None:
    members = parse_members(load("pool_members.json"))
    got = {m.name: (m.key, m.host, m.port, m.available, m.state, m.session) for m in members}
    assert got == EXPECTED_MEMBERS
    # order of the F5 answer is kept
    assert [m.name for m in members][:3] == [
        "10.20.0.11:8000", "10.20.0.12:8000", "_auto_10.20.5.7:8000"]


def test_fqdn_templates_are_dropped_but_their_ephemeral_children_kept() -> None:
    payload = load("pool_members.json")
    templates = [i["name"] for i in payload["items"] if i["address"] == "any6"]
    assert templates == ["llm.example.net:8000", "vllm.example.net:8000"]
    names = {m.name for m in parse_members(payload)}
    assert names.isdisjoint(templates)
    assert {"_auto_10.20.5.7:8000", "_auto_fd00.20..7:8000"} <= names


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"address": "any6", "state": "fqdn-up"}, "any6 template up"),
        ({"address": "any6", "state": "fqdn-up-no-addr"}, "unresolved template"),
        ({"address": "any", "state": "fqdn-down"}, "IPv4 template"),
        ({"address": "any6", "state": "unchecked"}, "any6 address alone"),
        ({"address": "10.0.0.9", "state": "fqdn-checking"}, "fqdn-* state alone"),
    ],
)
def test_placeholder_members_dropped(fields: dict[str, Any], why: str) -> None:
    assert parse_members([item(name="svc.example.net:8000", **fields)]) == [], why


def test_bare_list_of_items() -> None:
    members = parse_members(load("pool_members_bare_list.json"))
    assert members == [
        MemberInfo(key="192.0.2.40:8080", host="192.0.2.40", port=8080, available=False,
                   name="192.0.2.40:8080", state="up", session="user-disabled")
    ]


@pytest.mark.parametrize(
    ("state", "session", "available"),
    [
        ("up", "monitor-enabled", True),
        ("up", "user-enabled", True),
        ("up", "", True),
        ("unchecked", "user-enabled", True),
        ("user-up", "user-enabled", True),
        ("checking", "monitor-enabled", False),
        ("down", "monitor-enabled", False),
        ("user-down", "user-disabled", False),  # forced offline
        ("user-down", "user-enabled", False),
        ("up", "user-disabled", False),  # disabled
        ("unchecked", "user-disabled", False),
        ("fqdn-up", "user-enabled", False),
        ("fqdn-down", "user-enabled", False),
        ("", "monitor-enabled", False),
        ("some-future-state", "monitor-enabled", False),
        ("up", "some-future-session", False),
    ],
)
def test_availability_rules(state: str, session: str, available: bool) -> None:
    assert is_available(state, session) is available
    assert parse_member(item(state=state, session=session)).available is available


@pytest.mark.parametrize(
    ("name", "address", "port"),
    [
        ("10.0.0.1:8000", "10.0.0.1", 8000),
        ("node-a:443", "10.0.0.7", 443),
        ("gpu.node.example:8001", "10.0.0.7", 8001),
        ("fd00::1.8000", "fd00::1", 8000),
        ("2001:db8::8000.80", "2001:db8::8000", 80),  # address ends in digits too
        ("::ffff:10.0.0.1.9000", "::ffff:10.0.0.1", 9000),
        ("_auto_2001.db8..5:80", "2001:db8::5", 80),
        ("_auto_192.0.2.8:8080", "192.0.2.8", 8080),
        ("10.1.1.5%2:8000", "10.1.1.5", 8000),
        ("fd00::1%3.8000", "fd00::1", 8000),
        ("node-v6:8000", "fd00::9", 8000),
        ("node-v6.8000", "fd00::9", 8000),
    ],
)
def test_port_from_member_name(name: str, address: str, port: int) -> None:
    assert member_port(name, address) == port


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("10.0.0.1", "10.0.0.1"),  # no port; the IPv4 dot rule must not read "1"
        ("node-a", "10.0.0.7"),
        ("10.0.0.1:http", "10.0.0.1"),
        ("10.0.0.1:0", "10.0.0.1"),
        ("10.0.0.1:70000", "10.0.0.1"),
        ("fd00::1", "fd00::1"),  # last group is hex digits, not a port
        ("node.example.com", "10.0.0.7"),
    ],
)
def test_bad_member_names(name: str, address: str) -> None:
    with pytest.raises(F5PayloadError, match="member"):
        member_port(name, address)


@pytest.mark.parametrize(
    ("address", "host"),
    [("10.1.1.5%2", "10.1.1.5"), ("fd00::1%12", "fd00::1"), ("10.0.0.1", "10.0.0.1")],
)
def test_route_domain_stripped(address: str, host: str) -> None:
    assert strip_route_domain(address) == host


@pytest.mark.parametrize(
    ("fields", "key", "host"),
    [
        ({"name": "10.1.1.5%2:8000", "address": "10.1.1.5%2"}, "10.1.1.5:8000", "10.1.1.5"),
        ({"name": "fd00::5%4.8000", "address": "fd00::5%4"}, "[fd00::5]:8000", "fd00::5"),
        ({"name": "fd00::5.8000", "address": "fd00::5"}, "[fd00::5]:8000", "fd00::5"),
        ({"name": "node-b:9000", "address": "192.0.2.1"}, "192.0.2.1:9000", "192.0.2.1"),
    ],
)
def test_key_and_host(fields: dict[str, Any], key: str, host: str) -> None:
    member = parse_member(item(**fields))
    assert (member.key, member.host, member.name) == (key, host, fields["name"])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("not json object", "expected a JSON object or list"),
        (42, "expected a JSON object or list"),
        ({"items": {"a": 1}}, "not a list"),
        ([["10.0.0.1:80"]], "not an object"),
        ([{"address": "10.0.0.1", "state": "up"}], "'name'"),
        ([{"name": "10.0.0.1:80", "state": "up"}], "'address'"),
        ([{"name": "10.0.0.1:80", "address": 167772161}], "'address'"),
        ([{"name": "10.0.0.1:80", "address": "10.0.0.1", "state": 1}], "'state'"),
        ([{"name": "node-a:80", "address": "node-a.example"}], "not an IP"),
        ([{"name": "10.0.0.1", "address": "10.0.0.1"}], "no port"),
    ],
)
def test_bad_member_payloads_raise_typed_error(payload: Any, match: str) -> None:
    with pytest.raises(F5PayloadError, match=match):
        parse_members(payload)


def test_empty_collections() -> None:
    kind = "tm:ltm:pool:members:memberscollectionstate"
    assert parse_members({"kind": kind, "selfLink": "https://localhost/x"}) == []
    assert parse_members({"kind": kind, "items": []}) == []
    assert parse_members([]) == []


def test_pool_names() -> None:
    payload = load("pools.json")
    assert list_pool_names(payload) == ["llm-pool", "sglang-pool", "tenant.pool-1_a"]
    assert list_pool_names(payload, "Common") == ["llm-pool", "sglang-pool"]
    assert list_pool_names(payload, "Tenant_B.x-1") == ["tenant.pool-1_a"]
    assert list_pool_names(payload, "Nope") == []
    assert list_pool_names({"kind": "tm:ltm:pool:poolcollectionstate"}) == []


@pytest.mark.parametrize(
    ("payload", "match"),
    [([{"partition": "Common"}], "'name'"), ({"items": "x"}, "not a list"), ([7], "not an object")],
)
def test_bad_pool_payloads(payload: Any, match: str) -> None:
    with pytest.raises(F5PayloadError, match=match):
        list_pool_names(payload)


def test_login_response() -> None:
    assert parse_login(load("login_response.json")) == LoginToken(
        token="Q7M2XK4RZB6TJ5NW3HC8PLDVEA", timeout=1200.0)


@pytest.mark.parametrize(
    ("payload", "result"),
    [
        ({"token": {"token": "T1"}}, LoginToken(token="T1", timeout=1200.0)),  # default
        ({"token": {"token": "T2", "timeout": 36000}}, LoginToken(token="T2", timeout=36000.0)),
        ({"token": {"token": "T3", "timeout": 0.5}}, LoginToken(token="T3", timeout=0.5)),
    ],
)
def test_login_timeout(payload: Any, result: LoginToken) -> None:
    assert parse_login(payload) == result


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {},
        {"token": "ABC"},
        {"token": {"name": "ABC"}},
        {"token": {"token": ""}},
        {"token": {"token": "A", "timeout": "1200"}},
        {"token": {"token": "A", "timeout": 0}},
        {"token": {"token": "A", "timeout": True}},
    ],
)
def test_bad_login_payloads(payload: Any) -> None:
    with pytest.raises(F5PayloadError, match="login response"):
        parse_login(payload)


ERROR_CASES = {case["case"]: case for case in load("error_bodies.json")}


@pytest.mark.parametrize(
    ("case", "code", "pool_not_found", "not_registered", "message_part"),
    [
        ("pool_not_found", 404, True, False, "(/Common/llm-pool) was not found"),
        ("not_registered", 404, False, True, "URI path /mgmt/tm/ltm/pool/?Common?llm-pool"),
        ("public_not_registered", 404, False, True, "Public URI path not registered"),
        ("mcpd_lost", 500, False, False, "connection to mcpd has been lost"),
        ("no_auth", 401, False, False, "no user authentication header"),
        ("token_expired", 401, False, False, "X-F5-Auth-Token has expired."),
        ("restarting", None, False, False, "Configuration Utility restarting..."),
    ],
)
def test_error_bodies(
    case: str, code: int | None, pool_not_found: bool, not_registered: bool, message_part: str
) -> None:
    body = parse_error_body(ERROR_CASES[case]["body"])
    assert body.code == code
    assert message_part in body.message
    assert is_pool_not_found(body.message) is pool_not_found
    assert is_not_registered(body.message) is not_registered


def test_error_body_html_is_flattened_and_bounded() -> None:
    body = parse_error_body(ERROR_CASES["restarting"]["body"], limit=60)
    assert body.message.startswith("BIG-IP® - Configuration Utility restarting...")
    assert "<" not in body.message
    assert len(body.message) <= 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ErrorBody(code=None, message="")),
        ("plain\n  text", ErrorBody(code=None, message="plain text")),
        ('{"code": 400, "message": "bad"}', ErrorBody(code=400, message="bad")),
        ('{"oops": 1}', ErrorBody(code=None, message='{"oops": 1}')),
        ('{"truncated', ErrorBody(code=None, message='{"truncated')),
    ],
)
def test_error_body_odd_inputs(text: str, expected: ErrorBody) -> None:
    assert parse_error_body(text) == expected
