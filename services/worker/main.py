"""Composition root of the worker agent: ``llmsched worker --port P --manager-url URL``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from services.worker.app import WorkerIdentity, create_app
from services.worker.gpu import gpu_present
from services.worker.instances import InstanceManager, WorkerSettings
from services.worker.metrics import WorkerCollector
from services.worker.models import BACKENDS, Backend
from services.worker.registration import Registrar
from shared.http_server import QuietServer, bind_socket
from shared.logs import setup_logging
from shared.members import url_host
from shared.metrics import metrics_router, new_registry

log = logging.getLogger("llmsched.worker")

WILDCARDS = ("0.0.0.0", "::", "")


@dataclass
class WorkerOptions:
    """Everything the command line decides."""

    host: str = "127.0.0.1"
    port: int = 8100
    manager_url: str | None = None
    """The API service; None runs the worker standalone (no registration)."""
    worker_id: str | None = None
    worker_url: str | None = None
    api_key: str | None = None
    heartbeat_interval_s: float = 5.0
    settings: WorkerSettings = field(default_factory=WorkerSettings)


def build_parser() -> argparse.ArgumentParser:
    """The ``llmsched worker`` command line."""
    p = argparse.ArgumentParser(prog="llmsched worker",
                                description="Worker agent: runs this host's engine instances.")
    p.add_argument("--port", type=int, default=8100, help="worker API port (default 8100)")
    p.add_argument("--host", default="127.0.0.1", help="worker API address (default 127.0.0.1)")
    p.add_argument("--manager-url", help="API service to register with, e.g. http://api:8080")
    p.add_argument("--worker-id", help="default: HOSTNAME-PORT")
    p.add_argument("--worker-url", help="URL the manager uses to reach this worker "
                   "(default http://ADVERTISE_HOST:PORT)")
    p.add_argument("--advertise-host", help="host put in worker and instance URLs "
                   "(default: --host, or this host's address when --host is a wildcard)")
    p.add_argument("--engine-host", help="address engines listen on (default: --host)")
    p.add_argument("--api-key-env", default="LLMSCHED_ADMIN_KEY",
                   help="environment variable holding the API key sent to the manager and "
                   "required by this worker's API (default LLMSCHED_ADMIN_KEY; unset: none)")
    p.add_argument("--heartbeat-interval", type=float, default=5.0,
                   help="seconds between heartbeats (default 5)")
    p.add_argument("--engine-backend", choices=BACKENDS, default="sim",
                   help="backend of non-fake models whose spec names none (default sim)")
    p.add_argument("--vllm-python", default=os.environ.get("LLMSCHED_VLLM_PYTHON"),
                   help="python that has vLLM (default $LLMSCHED_VLLM_PYTHON or this python)")
    p.add_argument("--sglang-python", default=os.environ.get("LLMSCHED_SGLANG_PYTHON"),
                   help="python that has SGLang (default $LLMSCHED_SGLANG_PYTHON or this python)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU host (default: $LLMSCHED_GPU, else whether nvidia-smi exists)")
    p.add_argument("--log-dir", type=Path, help="engine process logs (default: a temp dir)")
    p.add_argument("--sim-gpu-memory-gb", type=float, default=80.0,
                   help="GPU memory reported by a host without GPUs (default 80)")
    p.add_argument("--log-level", default="INFO")
    return p


def _advertise(host: str) -> str:
    if host not in WILDCARDS:
        return host
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


def options_from_args(args: argparse.Namespace) -> WorkerOptions:
    """Turn parsed arguments into options (reads the API key from its variable)."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if args.heartbeat_interval <= 0:
        raise ValueError(f"--heartbeat-interval must be > 0, got {args.heartbeat_interval}")
    advertise = args.advertise_host or _advertise(args.host)
    backend: Backend = args.engine_backend
    settings = WorkerSettings(
        engine_host=args.engine_host or args.host, advertise_host=advertise,
        default_backend=backend, vllm_python=args.vllm_python or sys.executable,
        sglang_python=args.sglang_python or sys.executable,
        gpu=gpu_present() if args.gpu is None else args.gpu,
        log_dir=args.log_dir or Path(tempfile.gettempdir()) / f"llmsched-worker-{args.port}",
        sim_gpu_memory_gb=args.sim_gpu_memory_gb)
    return WorkerOptions(host=args.host, port=args.port, manager_url=args.manager_url,
                         worker_id=args.worker_id, worker_url=args.worker_url,
                         api_key=os.environ.get(args.api_key_env) or None,
                         heartbeat_interval_s=args.heartbeat_interval, settings=settings)


class Worker:
    """A running worker: HTTP API, instance table, registrar and engine watcher."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=200))
        self.instances = InstanceManager(options.settings, self.http)
        self.registrar: Registrar | None = None
        self.url = ""
        self.worker_id = ""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None

    async def start(self) -> Worker:
        """Bind, serve and start registering; returns once the API accepts connections."""
        o = self.options
        sock = bind_socket(o.host, o.port)
        port = int(sock.getsockname()[1])
        self.worker_id = o.worker_id or f"{socket.gethostname()}-{port}"
        self.url = o.worker_url or f"http://{url_host(o.settings.advertise_host)}:{port}"
        identity = WorkerIdentity(worker_id=self.worker_id, worker_url=self.url,
                                  api_key=o.api_key)
        app = create_app(self.instances, identity)
        prom = new_registry()
        prom.register(WorkerCollector(self.instances, self.worker_id))
        app.include_router(metrics_router(prom))
        self._server = QuietServer(uvicorn.Config(app, log_config=None, log_level="warning",
                                                  access_log=False, lifespan="off",
                                                  timeout_keep_alive=30))
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
                raise RuntimeError("worker API exited during start-up")
            await asyncio.sleep(0.01)
        self._tasks.append(asyncio.create_task(self.instances.watch(self._stop)))
        if o.manager_url:
            self.registrar = Registrar(o.manager_url, self.worker_id, self.url, self.instances,
                                       self.http, interval_s=o.heartbeat_interval_s,
                                       api_key=o.api_key)
            self.instances.on_change = self.registrar.poke
            self._tasks.append(asyncio.create_task(self.registrar.run(self._stop)))
        log.info("Worker %s listening on %s (manager %s)", self.worker_id, self.url,
                 o.manager_url or "none: standalone")
        return self

    async def stop(self) -> None:
        """Unregister, stop every instance, then the API."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.registrar is not None:
            await self.registrar.unregister()
        await self.instances.stop_all()
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._server_task
        await self.http.aclose()
        log.info("Worker %s stopped", self.worker_id)


async def serve(options: WorkerOptions, stop: asyncio.Event) -> None:
    """Run a worker until ``stop`` is set."""
    worker = await Worker(options).start()
    try:
        await stop.wait()
    finally:
        await worker.stop()


def main(argv: list[str] | None = None) -> int:
    """``llmsched worker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as err:
        print(f"llmsched worker: {err}", file=sys.stderr)
        return 2
    setup_logging("worker", args.log_level.upper())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(options, stop)

    try:
        asyncio.run(run())
    except OSError as err:
        print(f"llmsched worker: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
