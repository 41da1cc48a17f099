"""The autoscaler's hands: start, wake, sleep and stop instances through the worker API."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec

from shared.auth import bearer
from shared.model_spec import ModelSpec
from shared.workers import WorkerRecord

log = logging.getLogger("llmsched.autoscaler")

CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0
"""A simulated instance answers when ready; a real engine's start returns at once."""


class ActionFailed(Exception):
    """A worker refused or did not answer."""


def pick_worker(workers: list[WorkerRecord]) -> WorkerRecord | None:
    """The active worker with the most free room: GPU memory if it says, else fewest engines."""
    active = [w for w in workers if w.state == "active"]
    if not active:
        return None

    def room(worker: WorkerRecord) -> tuple[float, int, str]:
        memory = worker.gpu_info.get("available_memory_gb")
        free = float(memory) if isinstance(memory, int | float) else 0.0
        return (free, -len(worker.instances), worker.worker_id)

    return max(active, key=room)


class WorkerActions:
    """HTTP calls to workers, with the admin key every worker requires when one is set."""

    def __init__(self, http: httpx.AsyncClient, admin_key: str | None) -> None:
        self.http = http
        self.headers = bearer(admin_key)

    async def _post(self, url: str, *, json: Any = None, params: dict[str, str] | None = None,
                    timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        try:
            r = await self.http.post(url, json=json, params=params, headers=self.headers,
                                     timeout=timeout_s)
        except httpx.HTTPError as err:
            raise ActionFailed(f"{url}: {type(err).__name__} {err}".strip()) from None
        if r.status_code >= 400:
            raise ActionFailed(f"{url} answered {r.status_code}: {r.text[:300]}")
        try:
            body = r.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def start(self, worker: WorkerRecord, spec: ModelSpec) -> str:
        """Start a replica of ``spec`` on ``worker``; returns the instance name."""
        body = msgspec.to_builtins(spec)
        body["add_replica"] = True
        reply = await self._post(f"{worker.worker_url.rstrip('/')}/instances/start", json=body,
                                 timeout_s=START_TIMEOUT_S)
        name = reply.get("alias") or reply.get("instance") or reply.get("name")
        return str(name) if name else spec.alias

    async def wake(self, worker_url: str, instance: str) -> None:
        await self._post(f"{worker_url.rstrip('/')}/instances/{instance}/wake")

    async def sleep(self, worker_url: str, instance: str, level: int) -> None:
        """Sleep at ``level``; the caller drained it already, so the worker need not wait."""
        await self._post(f"{worker_url.rstrip('/')}/instances/{instance}/sleep",
                         params={"level": str(level)}, json={"drain_timeout_s": 0})

    async def stop(self, worker_url: str, instance: str) -> None:
        await self._post(f"{worker_url.rstrip('/')}/instances/{instance}/stop")
