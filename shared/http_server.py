"""Run an ASGI app on a real loopback socket inside the current event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: without it a keep-alive reply written in two parts
    # waits ~40 ms for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def socket_from_fd(fd: int) -> socket.socket:
    """The listening TCP socket a parent process handed down as file descriptor ``fd``."""
    if fd < 0:
        raise ValueError(f"file descriptor {fd} is negative")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise ValueError(f"file descriptor {fd} is not a socket ({err.strerror})") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_ACCEPTCONN):
        sock.detach()
        raise ValueError(f"file descriptor {fd} is not a listening TCP socket")
    sock.setblocking(False)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for child processes that bind it themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RunningServer:
    """A uvicorn server started by :func:`serve_app`; ``url`` is its base URL."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], sock: socket.socket):
        self.server = server
        self.task = task
        self.socket = sock
        host, port = sock.getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_app(app: Any, host: str = "127.0.0.1", port: int = 0,
                    **kwargs: Any) -> RunningServer:
    """Start ``app`` in this loop and wait until it accepts connections."""
    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on",
                            access_log=False, **kwargs)
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, sock)


@contextlib.asynccontextmanager
async def serve_app(app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
                    ) -> AsyncIterator[RunningServer]:
    """``async with serve_app(app) as srv: httpx.get(srv.url + ...)``."""
    running = await start_app(app, host, port, **kwargs)
    try:
        yield running
    finally:
        await running.stop()
