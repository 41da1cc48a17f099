"""Bad input on every gateway and admin endpoint: a 4xx in OpenAI's shape naming the problem."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.fleet import FAKE, MakeFleet

pytestmark = pytest.mark.integration


def _error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), [
    ("POST", "/v1/chat/completions", b"", 400, None),
    ("POST", "/v1/chat/completions", b"{oops", 400, None),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user"}]}', 400, "model"),
    ("POST", "/v1/chat/completions", b'{"model": "fake-model"}', 400, "messages"),
    ("POST", "/v1/chat/completions", b'{"model": "fake-model", "messages": [{"role": "u"}],'
                                     b' "max_tokens": -1}', 400, "max_tokens"),
    ("POST", "/v1/chat/completions", b'{"model": "ghost", "messages": [{"role": "u"}]}', 404,
     "model"),
    ("POST", "/v1/completions", b'{"model": "fake-model"}', 400, "prompt"),
    ("GET", "/v1/chat/completions", b"", 405, None),
    ("POST", "/v1/models", b"", 405, None),
    ("POST", "/v1/embeddings", b"{}", 404, None),
    ("POST", "/admin/models/register", b"", 400, None),
    ("POST", "/admin/models/register", b"[]", 400, None),
    ("POST", "/admin/models/register", b'{"model_name": "x"}', 400, "alias"),
    ("POST", "/admin/models/register", b'{"alias": "bad alias!", "model_name": "x"}', 400,
     "alias"),
    ("POST", "/admin/models/register", b'{"alias": "m"}', 400, "model_name"),
    ("POST", "/admin/models/register", b'{"alias": "m", "model_name": "x", "port": 9}', 400,
     "port"),
    ("POST", "/admin/models/register", b'{"alias": "m", "model_name": "x", "fake_capacity":'
                                       b' 0}', 400, "fake_capacity"),
    ("POST", "/admin/models/register", b'{"alias": "m", "model_name": "x", "autoscaling":'
                                       b' {"load_high": 0.2, "load_low": 0.5}}', 400,
     "autoscaling.load_low"),
    ("POST", "/admin/models/register", b'{"alias": "m", "model_name": "x", "autoscaling":'
                                       b' {"bogus": 1}}', 400, "autoscaling"),
    ("DELETE", "/admin/models/ghost", b"", 404, "alias"),
])
async def test_bad_input_gets_a_4xx_naming_the_problem(
        make_fleet: MakeFleet, method: str, path: str, body: bytes, status: int,
        param: str | None) -> None:
    fleet = await make_fleet(worker=False, autoscaling={"min_replicas": 0})
    await fleet.register({**FAKE})
    r = await fleet.http.request(method, f"{fleet.api}{path}", content=body,
                                 headers={"content-type": "application/json"})
    assert r.status_code == status, (r.status_code, r.text)
    error = _error(r)
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error
    assert error["message"], error


async def test_keys_guard_admin_and_openai_endpoints(
        make_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSCHED_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("TEST_GATEWAY_KEYS", "k1, k2")
    fleet = await make_fleet(worker=False, autoscaling={"min_replicas": 0},
                             gateway={"api_keys_env": "TEST_GATEWAY_KEYS"})
    body = {**FAKE}
    r = await fleet.http.post(f"{fleet.api}/admin/models/register", json=body)
    assert r.status_code == 401 and _error(r)["type"] == "authentication_error", r.text
    r = await fleet.http.post(f"{fleet.api}/admin/models/register", json=body,
                              headers={"authorization": "Bearer admin-secret"})
    assert r.status_code == 201, r.text
    r = await fleet.http.get(f"{fleet.api}/v1/models")
    assert r.status_code == 401, r.text
    r = await fleet.http.get(f"{fleet.api}/v1/models", headers={"authorization": "Bearer k2"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake-model", r.text
    for path in ("/admin/models", "/admin/status", "/admin/workers"):
        r = await fleet.http.get(f"{fleet.api}{path}")
        assert r.status_code == 401, (path, r.text)
