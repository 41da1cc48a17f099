"""Start simulated engines on real sockets in the current event loop (one or a fleet)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from services.enginesim.config import EngineConfig
from services.enginesim.instance import EngineInstance
from services.enginesim.server import build_app
from shared.http_server import RunningServer, start_app


@dataclass
class RunningEngine:
    """A started instance and its server."""

    instance: EngineInstance
    server: RunningServer

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:9001."""
        return self.server.url

    async def stop(self, grace: float = 3.0) -> None:
        """Shut down; connections still open after ``grace`` seconds (hung clients) are cut."""
        uv = self.server.server
        uv.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.server.task), grace)
        except TimeoutError:
            _abort_connections(uv)
        with contextlib.suppress(asyncio.CancelledError):
            await self.server.task


def crash_handler(server: RunningServer) -> Callable[[str], None]:
    """What ``{"crash": mode}`` does: exit the process, or drop this server's sockets at once."""

    def crash(mode: str) -> None:
        if mode == "exit":
            os._exit(1)
        server.server.should_exit = True
        _abort_connections(server.server)

    return crash


def _abort_connections(uv: uvicorn.Server) -> None:
    uv.force_exit = True
    for conn in list(getattr(uv.server_state, "connections", ())):
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()


async def start_server(app: Any, host: str, port: int) -> RunningServer:
    """Serve ``app`` in this event loop (TCP_NODELAY, no signal capture: see shared)."""
    return await start_app(app, host, port, timeout_keep_alive=30)


async def start_engine(config: EngineConfig, host: str = "127.0.0.1", port: int = 0
                       ) -> RunningEngine:
    """Start one engine; port 0 picks a free port."""
    inst = EngineInstance(config, host=host, port=port)
    server = await start_server(build_app(inst), host, port)
    inst.port = server.port
    inst.on_crash = crash_handler(server)
    return RunningEngine(inst, server)


async def start_fleet(configs: Sequence[tuple[EngineConfig, int]], host: str = "127.0.0.1"
                      ) -> list[RunningEngine]:
    """Start several engines in this process; stops those already started if one fails."""
    started: list[RunningEngine] = []
    try:
        for config, port in configs:
            started.append(await start_engine(config, host, port))
    except BaseException:
        for engine in started:
            await engine.stop()
        raise
    return started
