"""The seed's ``PDRouter`` interface as a small client of llmsched's PD admin and OpenAI APIs.

    from shared.pd_client import InstanceRole, PDClient, PDInstance

    with PDClient("http://127.0.0.1:8080", pool="pd") as router:
        router.register_instance(PDInstance("p1", InstanceRole.PREFILL, "10.0.0.1", 8000))
        router.run_health_checks()
        result = router.route_request({"prompt": "hello", "max_tokens": 100})
        print(result.success, result.instance.instance_id if result.instance else None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

ADMIN_KEY_ENV = "LLMSCHED_ADMIN_KEY"


class InstanceRole(StrEnum):
    """The seed's roles."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass
class PDInstance:
    """One instance; the fields after ``port`` are what the router reports of it."""

    instance_id: str
    role: InstanceRole | str
    host: str
    port: int
    state: str = "active"
    """active, draining or drained."""
    healthy: bool | None = None
    """The last health check's verdict (None: not checked yet)."""
    routable: bool | None = None
    """Whether the scheduler may send it new requests now (None: unknown)."""
    inflight: int | None = None
    origin: str = "api"
    """config (the file), api (registered) or worker."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass
class RouteResult:
    """How one request through the prefill → decode pipeline went."""

    success: bool
    status: int
    instance: PDInstance | None
    """The decode instance that answered (the seed's ``result.instance``)."""
    prefill: PDInstance | None
    response: dict[str, Any] | None
    """The OpenAI answer (success) or error body."""
    error: str | None = None


class PDClientError(Exception):
    """The router refused a call; ``status`` and ``code`` are its answer's."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(f"{status} {code or ''}: {message}".replace("  ", " "))
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class PDClient:
    """Register, drain, list and check a PD pool's instances; route requests through it."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", pool: str = "pd", *,
                 partition: str = "Common", model: str | None = None,
                 admin_key: str | None = None, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.pool = pool
        self.partition = partition
        self.model = model
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout_s, transport=transport)

    def __enter__(self) -> PDClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the seed's interface ------------------------------------------------------------
    def register_instance(self, instance: PDInstance) -> bool:
        """Add (or replace) an instance; True when it is new."""
        body = {"id": instance.instance_id, "role": _role(instance.role),
                "host": instance.host, "port": instance.port}
        data = self._call("POST", f"{self._base}/instances", json=body)
        return bool(data["created"])

    def unregister_instance(self, instance_id: str) -> None:
        """Remove an instance: it leaves routing (requests in flight on it go on)."""
        self._call("DELETE", f"{self._base}/instances/{instance_id}")

    def drain_instance(self, instance_id: str, *, wait: bool = False) -> PDInstance:
        """No new requests to it; with ``wait``, return once drained or ``drain_timeout``."""
        data = self._call("POST", f"{self._base}/instances/{instance_id}/drain",
                          params={"wait": "true" if wait else "false"})
        return _instance(data)

    def get_instances(self, role: InstanceRole | str | None = None) -> list[PDInstance]:
        """Every instance, or those of ``role``."""
        params = {"role": _role(role)} if role is not None else None
        data = self._call("GET", f"{self._base}/instances", params=params)
        return [_instance(item) for item in data["instances"]]

    def run_health_checks(self) -> dict[str, bool]:
        """Check every instance now; instance id → healthy."""
        data = self._call("POST", f"{self._base}/health-check")
        return {item["id"]: bool(item["healthy"]) for item in data["instances"]}

    def route_request(self, request: dict[str, Any]) -> RouteResult:
        """Send one OpenAI request (``messages``: chat, else completions) through the pool.

        Without ``model`` in the request, the pool's model is used. A streamed request is
        read to the end; ``response`` then holds the last JSON event.
        """
        body = dict(request)
        body.setdefault("model", self.model or self._pool_model())
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        try:
            r = self._http.post(path, json=body)
        except httpx.HTTPError as err:
            return RouteResult(False, 0, None, None, None, f"{type(err).__name__}: {err}")
        response = _answer(r)
        if r.status_code != 200:
            message = (response or {}).get("error", {}).get("message") if response else None
            return RouteResult(False, r.status_code, None, None, response,
                               message or r.text[:300])
        by_key = {i.url.removeprefix("http://"): i for i in self.get_instances()}
        return RouteResult(True, 200, by_key.get(r.headers.get("x-llmsched-decode", "")),
                           by_key.get(r.headers.get("x-llmsched-prefill", "")), response)

    # -- plumbing ------------------------------------------------------------------------
    @property
    def _base(self) -> str:
        return f"/admin/pd/{self.pool}"

    def _pool_model(self) -> str:
        for entry in self._call("GET", "/admin/pd")["pools"]:
            if entry["pool"] == self.pool and entry["partition"] == self.partition:
                self.model = str(entry["model"])
                return self.model
        raise PDClientError(404, f"no PD pool {self.pool!r}", "pool_not_found")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        params = dict(kwargs.pop("params", None) or {})
        params.setdefault("partition", self.partition)
        r = self._http.request(method, path, params=params, **kwargs)
        data = _answer(r)
        if r.status_code >= 400 or data is None:
            error = (data or {}).get("error", {})
            raise PDClientError(r.status_code, error.get("message") or r.text[:300],
                                error.get("code"), error.get("param"))
        return data


def _role(role: InstanceRole | str) -> str:
    return role.value if isinstance(role, InstanceRole) else str(role)


def _instance(item: dict[str, Any]) -> PDInstance:
    role = item["role"]
    return PDInstance(instance_id=item["id"],
                      role=InstanceRole(role) if role in ("prefill", "decode") else role,
                      host=item["host"], port=item["port"], state=item.get("state", "active"),
                      healthy=item.get("healthy"), routable=item.get("routable"),
                      inflight=item.get("inflight"), origin=item.get("origin", "api"),
                      details=item)


def _answer(r: httpx.Response) -> dict[str, Any] | None:
    """The JSON object of an answer; the last event of an SSE stream."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[6:] for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        r = httpx.Response(200, content=events[-1] if events else b"{}")
    try:
        data = r.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
