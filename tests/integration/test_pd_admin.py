"""The PD admin API's answers to bad input: a 4xx naming the problem, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.pd_stack import MakePD, make_pd_fixture  # noqa: F401

pytestmark = pytest.mark.integration

GOOD = {"id": "d9", "role": "decode", "host": "127.0.0.1", "port": 9}


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    (b"{nope", 400, None, "not valid JSON"),
    (b"[]", 400, None, "JSON object"),
    ({k: v for k, v in GOOD.items() if k != "port"}, 400, "port", "port"),
    ({**GOOD, "role": "leader"}, 400, "role", "leader"),
    ({**GOOD, "port": 70000}, 400, "port", "65535"),
    ({**GOOD, "id": "bad id!"}, 400, "id", "regex"),
    ({**GOOD, "colour": "red"}, 400, "colour", "unknown field"),
])
async def test_register_refuses_bad_bodies(make_pd: MakePD, body: Any, status: int,
                                           param: str | None, words: str) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    url = f"{stack.api}/admin/pd/chat/instances"
    r = await (stack.http.post(url, content=body) if isinstance(body, bytes)
               else stack.http.post(url, json=body))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


async def test_unknown_pools_and_instances_are_404s_and_conflicts_409(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    api = stack.api
    r = await stack.http.get(f"{api}/admin/pd/nope/instances")
    assert r.status_code == 404 and r.json()["error"]["code"] == "pool_not_found", r.text
    r = await stack.http.get(f"{api}/admin/pd/chat/instances", params={"partition": "Other"})
    assert r.status_code == 404, r.text
    for method, path in (("DELETE", "instances/zz"), ("POST", "instances/zz/drain")):
        r = await stack.http.request(method, f"{api}/admin/pd/chat/{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "instance_not_found", r.text
    taken = {**GOOD, "id": "other", "port": stack.engines["d1"].server.port}
    r = await stack.http.post(f"{api}/admin/pd/chat/instances", json=taken)
    assert r.status_code == 409 and r.json()["error"]["param"] == "host", r.text
    r = await stack.http.get(f"{api}/admin/pd/chat/instances", params={"role": "leader"})
    assert r.status_code in (400, 422) and "role" in r.text, r.text


async def test_register_twice_is_created_then_replaced(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    url = f"{stack.api}/admin/pd/chat/instances"
    first = await stack.http.post(url, json=GOOD)
    assert first.status_code == 201 and first.json()["created"] is True, first.text
    again = await stack.http.post(url, json={**GOOD, "port": 10})
    assert again.status_code == 200 and again.json()["created"] is False, again.text
    listed = (await stack.instances("decode"))["d9"]
    assert (listed["port"], listed["origin"]) == (10, "api"), listed
    gone = await stack.http.delete(f"{url}/d9")
    assert gone.status_code == 200, gone.text
    assert "d9" not in await stack.instances()


async def test_the_admin_key_guards_the_pd_api(make_pd: MakePD,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSCHED_ADMIN_KEY", "sesame")
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)}, listed=False)
    r = await stack.http.get(f"{stack.api}/admin/pd/chat/instances")
    assert r.status_code == 401, r.text
    r = await stack.http.get(f"{stack.api}/admin/pd/chat/instances",
                             headers={"Authorization": "Bearer sesame"})
    assert r.status_code == 200, r.text
