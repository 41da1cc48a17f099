"""An answer's head leaves with its first body bytes: the transport proxy and uvicorn with it.

The server runs on the default asyncio loop and on uvloop (what the services run on), on a
real loopback socket, and is read by a raw socket client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import uvicorn
import uvloop

from shared.coalesce import CoalescingHttpToolsProtocol, CoalescingTransport

Scope = MutableMapping[str, Any]


class Socketpair:
    """A real connected pair: the server side as an asyncio transport, the peer raw."""

    def __init__(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.transport: asyncio.Transport | None = None

    async def open(self) -> CoalescingTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, self.ours)
        self.transport = transport
        return CoalescingTransport(transport, loop)

    async def read(self, timeout_s: float = 2.0) -> bytes:
        """One recv of what has arrived (waits for the first byte)."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.peer, 65536), timeout_s)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.peer.close()


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Socketpair, CoalescingTransport]]:
    """A socket pair whose server side is wrapped; both ends closed at the end."""
    pair = Socketpair()
    try:
        yield pair, await pair.open()
    finally:
        pair.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    def runner(scenario: Callable[[], Awaitable[None]]) -> None:
        main = asyncio.wait_for(scenario(), 30)
        if request.param == "uvloop":
            uvloop.run(main)
        else:
            asyncio.run(main)

    return runner


def test_a_head_leaves_with_its_body_in_one_write_at_once(run: Any) -> None:
    async def scenario() -> None:
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\n\r\n")
            t.write(b"")  # nothing: no write
            assert t.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n")
            with pytest.raises(BlockingIOError):  # the head waits for its body
                pair.peer.recv(100)
            t.write(bytearray(b"body"))
            # Both went to the kernel in this pass, as one write: no loop pass needed.
            assert t.get_write_buffer_size() == 0, "head and body still held"
            got = await pair.read()
            assert got == b"HTTP/1.1 200 OK\r\n\r\nbody", got
            t.writelines([b"HTTP/1.1 204 ", b"No Content\r\n\r\n"])
            assert await pair.read() == b"HTTP/1.1 204 No Content\r\n\r\n"

    run(scenario)


def test_a_head_without_a_body_in_its_pass_leaves_alone_at_the_next(run: Any) -> None:
    async def scenario() -> None:
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            with pytest.raises(BlockingIOError):
                pair.peer.recv(100)
            got = await pair.read()  # the next pass sends it
            assert got == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", got
            assert t.get_write_buffer_size() == 0

    run(scenario)


def test_a_streams_later_chunk_leaves_at_once(run: Any) -> None:
    """Only a burst that starts with a head waits for the end of its pass."""
    async def scenario() -> None:
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            assert await pair.read() == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            t.write(b"5\r\nfirst\r\n")
            assert t.get_write_buffer_size() == 0, "a chunk after its head's pass is not held"
            await asyncio.sleep(0.05)  # the kernel delivers it; no loop pass in between needed
            assert pair.peer.recv(100) == b"5\r\nfirst\r\n"
            t.write(memoryview(b"6\r\nsecond\r\n"))
            t.write(b"0\r\n\r\n")
            assert await pair.read() == b"6\r\nsecond\r\n0\r\n\r\n"

    run(scenario)


def test_close_sends_what_is_pending_abort_drops_it(run: Any) -> None:
    async def scenario() -> None:
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\n\r\nlast words")
            t.close()
            assert t.is_closing()
            assert await pair.read() == b"HTTP/1.1 200 OK\r\n\r\nlast words"
            assert await pair.read() == b"", "closed after the pending bytes"
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\n\r\nnever sent")
            t.abort()
            try:
                got = await pair.read()
            except ConnectionResetError:
                got = b""  # an abort may reset the connection: no byte either way
            assert got == b"", f"an aborted connection sent {got!r}"

    run(scenario)


def test_pending_bytes_for_a_transport_closed_meanwhile_are_dropped(run: Any) -> None:
    async def scenario() -> None:
        async with _pair() as (pair, t):
            t.write(b"HTTP/1.1 200 OK\r\n\r\ntoo late")
            assert pair.transport is not None
            pair.transport.close()  # the connection ends before the next pass
            await asyncio.sleep(0.05)  # the flush runs: no error, nothing written
            assert t.get_write_buffer_size() == 0

    run(scenario)


class Gates:
    """Set by the client when it has read a part; the app waits for them before the next
    part, so an answer held back by the server would stall the test (it times out)."""

    def __init__(self) -> None:
        self.head_read = asyncio.Event()
        self.first_read = asyncio.Event()


def _app(gates: Gates) -> Callable[[Scope, Any, Any], Awaitable[None]]:
    """``/json``: head and body at once; ``/slow``: head, then the body once the client
    has the head; ``/stream``: a chunk, then another once the client has the first."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        if path == "/json":
            body = b'{"ok":true}'
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        if path == "/slow":
            await gates.head_read.wait()
            await send({"type": "http.response.body", "body": b"late"})
            return
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await gates.first_read.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _serve(gates: Gates) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app(gates), http=CoalescingHttpToolsProtocol, log_config=None,
                            lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    sock.listen(16)  # clients queue in the backlog until the server accepts
    task = asyncio.create_task(server.serve(sockets=[sock]))
    return server, task, sock.getsockname()[1]


async def _read_until(reader: asyncio.StreamReader, marker: bytes, what: str) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(marker), 5)
    except TimeoutError:
        raise AssertionError(f"{what}: nothing up to {marker!r} within 5 s") from None


def test_uvicorn_serves_keep_alive_json_and_streams_without_holding_bytes(run: Any) -> None:
    async def scenario() -> None:
        gates = Gates()
        server, task, port = await _serve(gates)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):  # one connection, several answers
                writer.write(b"GET /json HTTP/1.1\r\nhost: t\r\n\r\n")
                head = await _read_until(reader, b"\r\n\r\n", "json head")
                assert head.startswith(b"HTTP/1.1 200"), head
                body = await asyncio.wait_for(reader.readexactly(11), 5)
                assert body == b'{"ok":true}', body

            # Headers are not held until the body: the body waits for the client to have them.
            writer.write(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            head = await _read_until(reader, b"\r\n\r\n", "slow head")
            assert head.startswith(b"HTTP/1.1 200"), head
            gates.head_read.set()
            body = await _read_until(reader, b"0\r\n\r\n", "slow body")
            assert b"late" in body, body

            # A stream's first chunk arrives before the second is even sent.
            writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
            await _read_until(reader, b"\r\n\r\n", "stream head")
            first = await _read_until(reader, b"\n\n\r\n", "first chunk")
            assert b"data: 1" in first and b"data: 2" not in first, first
            gates.first_read.set()
            rest = await _read_until(reader, b"0\r\n\r\n", "rest")
            assert b"data: 2" in rest, rest
            writer.close()
        finally:
            server.should_exit = True
            await task

    run(scenario)
