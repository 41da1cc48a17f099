"""The worker's side of registration: register, heartbeat, re-register, unregister."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import msgspec

from services.worker.instances import InstanceManager
from shared.workers import HeartbeatRequest, RegisterRequest

log = logging.getLogger("llmsched.worker")

MAX_BACKOFF_S = 30.0
CALL_TIMEOUT_S = 5.0


class Registrar:
    """Keeps this worker registered with the manager (the API service); never raises."""

    def __init__(self, manager_url: str, worker_id: str, worker_url: str,
                 instances: InstanceManager, http: httpx.AsyncClient, *,
                 interval_s: float = 5.0, api_key: str | None = None) -> None:
        self.base = manager_url.rstrip("/")
        self.worker_id = worker_id
        self.worker_url = worker_url
        self.instances = instances
        self.http = http
        self.interval_s = interval_s
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.registered = False
        self.heartbeats = 0
        self._poke = asyncio.Event()
        self._unreachable = False

    def poke(self) -> None:
        """Send a heartbeat now (the instance table changed)."""
        self._poke.set()

    async def _call(self, method: str, path: str, body: object | None = None
                    ) -> httpx.Response | None:
        headers = dict(self.headers)
        content = None
        if body is not None:
            content = msgspec.json.encode(body)
            headers["content-type"] = "application/json"
        try:
            r = await self.http.request(method, self.base + path, headers=headers,
                                        content=content, timeout=CALL_TIMEOUT_S)
        except httpx.HTTPError as err:
            if not self._unreachable:
                log.warning("Manager %s unreachable (%s %s); retrying", self.base,
                            type(err).__name__, err)
            self._unreachable = True
            return None
        if self._unreachable:
            log.info("Manager %s reachable again", self.base)
        self._unreachable = False
        return r

    async def _gpu_info(self) -> dict[str, object]:
        info = msgspec.to_builtins(await self.instances.host_gpu())
        return info if isinstance(info, dict) else {}

    async def register(self) -> bool:
        """One registration attempt."""
        body = RegisterRequest(worker_id=self.worker_id, worker_url=self.worker_url,
                               gpu_info=await self._gpu_info(),
                               heartbeat_interval_s=self.interval_s,
                               instances=await self.instances.summaries())
        r = await self._call("POST", "/workers/register", body)
        if r is None:
            return False
        if r.status_code >= 400:
            log.warning("Registration refused: %s %s", r.status_code, r.text[:300])
            return False
        self.registered = True
        log.info("Registered as %s (%s) with %s", self.worker_id, self.worker_url, self.base)
        return True

    async def heartbeat(self) -> None:
        """One heartbeat; a 404 means the manager forgot us: register again."""
        body = HeartbeatRequest(instances=await self.instances.summaries(),
                                gpu_info=await self._gpu_info())
        r = await self._call("POST", f"/workers/{self.worker_id}/heartbeat", body)
        if r is None:
            return
        if r.status_code == 404:
            log.warning("Manager does not know worker %s; registering again", self.worker_id)
            self.registered = False
        elif r.status_code >= 400:
            log.warning("Heartbeat refused: %s %s", r.status_code, r.text[:300])
        else:
            self.heartbeats += 1

    async def unregister(self) -> bool:
        """Tell the manager this worker is leaving."""
        if not self.registered:
            return False
        r = await self._call("DELETE", f"/workers/{self.worker_id}/unregister")
        self.registered = False
        ok = r is not None and r.status_code < 400
        log.info("Unregistered %s: %s", self.worker_id,
                 "ok" if ok else "manager unreachable" if r is None else r.status_code)
        return ok

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poke.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._poke.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Register (with backoff), then heartbeat every interval until ``stop``."""
        backoff = min(1.0, self.interval_s)
        while not stop.is_set():
            if not self.registered:
                if not await self.register():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                backoff = min(1.0, self.interval_s)
            await self._wait(stop, self.interval_s)
            if stop.is_set():
                break
            await self.heartbeat()
