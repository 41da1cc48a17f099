"""Running engines: simulated ones in this process, real (or simulated) ones as child processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from services.worker.launch import Command
from shared.members import url_host

log = logging.getLogger("llmsched.worker")

LOG_TAIL = 2000


class EngineFailed(Exception):
    """The engine did not come up (or died); the message says why."""


class Engine(Protocol):
    """One running engine server, whatever runs it."""

    host: str
    port: int

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def log_path(self) -> str | None: ...

    def exit_reason(self) -> str | None:
        """Why the engine is gone, or None while it runs."""
        ...

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        """Return once /health answers 200; raise EngineFailed otherwise."""
        ...

    async def stop(self) -> None:
        """Shut the engine down (idempotent)."""
        ...


class InProcessSim:
    """A simulated engine served from this event loop (fake models, tests, demos)."""

    def __init__(self, running: RunningEngine) -> None:
        self.running = running
        self.host = running.server.host
        self.port = running.server.port
        self._stopped = False

    @classmethod
    async def start(cls, config: EngineConfig, host: str, port: int) -> InProcessSim:
        """Start a simulator on ``host:port`` (0: a free port)."""
        return cls(await start_engine(config, host, port))

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None

    @property
    def log_path(self) -> str | None:
        return None

    def exit_reason(self) -> str | None:
        if self._stopped:
            return "stopped"
        if self.running.server.task.done():
            return "engine server exited"
        return None

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        reason = self.exit_reason()
        if reason is not None:
            raise EngineFailed(reason)

    async def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            await self.running.stop()


class ChildEngine:
    """An engine running as a child process in its own session (so its helpers stop with it)."""

    def __init__(self, proc: asyncio.subprocess.Process, host: str, port: int,
                 log_file: Path) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.log_file = log_file

    @classmethod
    async def spawn(cls, command: Command, host: str, port: int, log_file: Path) -> ChildEngine:
        """Start ``command``; its output goes to ``log_file``."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **command.env}
        with _append(log_file) as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
            except OSError as err:
                raise EngineFailed(f"cannot run {command.argv[0]}: {err}") from None
        log.info("Started engine pid %s on port %s: %s", proc.pid, port, " ".join(command.argv))
        return cls(proc, host, port, log_file)

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def log_path(self) -> str | None:
        return str(self.log_file)

    def exit_reason(self) -> str | None:
        code = self.proc.returncode
        if code is None:
            return None
        return f"engine process exited with code {code}; log tail: {self.log_tail()!r}"

    def log_tail(self) -> str:
        """The end of the engine's output (start-up errors)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - LOG_TAIL))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reason = self.exit_reason()
            if reason is not None:
                raise EngineFailed(reason)
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(self.url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.25)
        raise EngineFailed(f"engine not healthy after {timeout_s:g}s; log tail: "
                           f"{self.log_tail()!r}")

    async def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            log.warning("Engine pid %s ignored SIGTERM for %ss; killing it", self.proc.pid,
                        grace_s)
            self._signal(signal.SIGKILL)
            await self.proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        # The engine leads its own session: signalling the group reaches vLLM's helper processes.
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


def _append(path: Path) -> BinaryIO:
    return open(path, "ab")  # a local file: opening it does not block the loop noticeably


def _url_host(host: str) -> str:
    # An engine bound to a wildcard address is reached by the worker over loopback.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return "[::1]" if host == "::" else url_host(host)
