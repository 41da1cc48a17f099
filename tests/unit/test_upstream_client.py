"""The gateway's upstream client against a raw loopback engine that misbehaves on demand.

Every scenario runs on the default asyncio loop and on uvloop (what the services run on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from services.api.gateway.upstream import (
    PAUSE_AT,
    Upstream,
    UpstreamBroken,
    UpstreamFailed,
    UpstreamResponse,
)

Scenario = Callable[[], Awaitable[None]]
BIG_CHUNK = 1 << 20
BIG_CHUNKS = 64
"""The backpressure body: far more than loopback socket buffers hold (a few MiB)."""


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Runs a scenario to the end on a fresh event loop of the parametrized kind."""

    def runner(scenario: Scenario) -> None:
        if request.param == "uvloop":
            uvloop.run(asyncio.wait_for(scenario(), 60))
        else:
            asyncio.run(asyncio.wait_for(scenario(), 60))

    return runner


@dataclass
class Seen:
    """One request as the engine read it."""

    conn: int
    path: str
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Engine:
    """A raw HTTP/1.1 server answering each request as its path says."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    gone: int = 0
    """Held answers whose client closed the connection first."""
    dropped: int = 0
    """Requests on a reused connection dropped unread (/idle-drop)."""
    big_sent: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = lines[0].split(" ")[1]
                self.requests.append(Seen(conn, path, lines[0], headers, body))
                served += 1
                if not await self.answer(path, served, conn, body, reader, writer):
                    return
        finally:
            self.closed += 1
            writer.close()

    async def answer(self, path: str, served: int, conn: int, body: bytes,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Write one answer; False when the connection must end."""
        if path == "/echo":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"X-Conn: %d\r\nDate: today\r\nContent-Length: %d\r\n\r\n%b"
                         % (conn, len(body), body))
        elif path == "/stream":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n" + _chunk(b"data: 1\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(_chunk(b"data: 2\n\n"))
            await writer.drain()
            if not await self.hold(reader):
                return False
            writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                         b"connection: close\r\n\r\nfirst part, ")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"second part")
            await writer.drain()
            return False
        elif path == "/interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                         b"link: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\n"
                         b"content-length: 2\r\n\r\nok")
        elif path == "/not-found":
            writer.write(b'HTTP/1.1 404 Not Found\r\ncontent-length: 17\r\n\r\n{"error": "nope"}')
        elif path == "/fail":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 18\r\n\r\n"
                         b"engine overloaded\n")
        elif path == "/fail-no-body":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10\r\n\r\n")
            await writer.drain()
            return await self.hold(reader)
        elif path == "/slow":
            return await self.hold(reader)
        elif path == "/slow-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            await writer.drain()
            return await self.hold(reader)
        elif path == "/reset-before":
            _reset(writer)
            return False
        elif path in ("/reset-mid", "/eof-mid"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            await writer.drain()
            if not await self.hold(reader):
                return False
            if path == "/reset-mid":
                _reset(writer)
            return False
        elif path == "/malformed":
            writer.write(b"HTTX/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif path == "/huge-head":
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(
                b"x-filler-%d: %b\r\n" % (i, b"v" * 1000) for i in range(100)))
            await writer.drain()
            return await self.hold(reader)
        elif path == "/close-when-idle":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            return False  # like a keep-alive timeout, right after the answer
        elif path in ("/idle-drop", "/partial-on-reuse"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            if not await reader.read(1):  # the next request's first byte arrives
                return False
            if path == "/idle-drop":
                self.dropped += 1  # closed as the request came in, never read
            else:
                writer.write(b"HTTP/1.1 200 O")
                await writer.drain()
            _reset(writer)
            return False
        elif path == "/big":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(BIG_CHUNKS):
                writer.write(_chunk(_big_piece(i)))
                await writer.drain()
                self.big_sent += BIG_CHUNK
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True

    async def hold(self, reader: asyncio.StreamReader) -> bool:
        """Wait for ``release``; False when the client closed the connection first."""
        released = asyncio.ensure_future(self.release.wait())
        eof = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({released, eof}, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        eof.cancel()
        if released.cancelled() or not released.done():
            if eof.done() and not eof.cancelled():
                eof.exception()  # a reset is as good as a close here
            self.gone += 1
            return False
        return True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _big_piece(i: int) -> bytes:
    return bytes([i % 251]) * BIG_CHUNK


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def engine_and_client(**kwargs: Any) -> Any:
    engine = Engine()
    server = await asyncio.start_server(engine.serve, "127.0.0.1", 0)
    engine.port = server.sockets[0].getsockname()[1]
    upstream = Upstream(**kwargs)
    try:
        yield engine, upstream
    finally:
        await upstream.close()
        server.close()
        engine.release.set()
        await server.wait_closed()


async def until(check: Callable[[], bool], what: Callable[[], str], within: float = 15) -> None:
    """Poll ``check`` until true; fail naming what was seen when the deadline passes."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting: {what()}")
        await asyncio.sleep(0.01)


async def read_all(response: UpstreamResponse) -> bytes:
    return response.first + b"".join([chunk async for chunk in response.rest()])


HEADERS = {"content-type": "application/json", "x-request-id": "abc-0"}


@contextlib.contextmanager
def failure() -> Iterator[list[UpstreamFailed]]:
    """Expect UpstreamFailed; the list holds it afterwards."""
    caught: list[UpstreamFailed] = []
    with pytest.raises(UpstreamFailed) as info:
        yield caught
    caught.append(info.value)


# --------------------------------------------------------------------------- answers


def test_content_length_answer_request_bytes_and_header_filter(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/echo"), b'{"model": "m"}', HEADERS, 10)
            body = await read_all(response)
            assert (response.status, body) == (200, b'{"model": "m"}')
            assert response.headers == [(b"content-type", b"application/json"),
                                        (b"x-conn", b"0")], response.headers
            sock = response._conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "Nagle is on"
            response.close()
            seen = engine.requests[0]
            assert seen.line == "POST /echo HTTP/1.1", seen
            assert seen.headers == {"host": f"127.0.0.1:{engine.port}",
                                    "content-type": "application/json",
                                    "x-request-id": "abc-0", "content-length": "14"}, seen
    run(scenario)


def test_chunked_stream_is_yielded_as_it_arrives_and_dechunked(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/stream"), b"{}", HEADERS, 10)
            got = bytearray(response.first)
            rest = response.rest()
            while b"data: 2\n\n" not in got:  # the engine holds the end of the stream
                got += await anext(rest)
            assert not engine.release.is_set()
            engine.release.set()
            got += b"".join([chunk async for chunk in rest])
            assert bytes(got) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n", bytes(got)
            response.close()
            assert upstream.idle_count() == 1, "a finished chunked answer keeps its connection"
    run(scenario)


def test_close_delimited_body_ends_at_the_close_and_is_not_pooled(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/close"), b"{}", HEADERS, 10)
            assert await read_all(response) == b"first part, second part"
            response.close()
            assert upstream.idle_count() == 0
    run(scenario)


def test_informational_answers_are_skipped(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/interim"), b"{}", HEADERS, 10)
            assert (response.status, response.headers, await read_all(response)) == (
                200, [(b"x-a", b"1")], b"ok")
    run(scenario)


def test_4xx_is_returned_5xx_raised_with_a_peek_at_the_body(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/not-found"), b"{}", HEADERS, 10)
            assert (response.status, await read_all(response)) == (404, b'{"error": "nope"}')
            response.close()
            with failure() as caught:
                await upstream.open(engine.url("/fail"), b"{}", HEADERS, 10)
            err = caught[0]
            assert (err.status, err.retryable) == (503, True), err.message
            assert err.message == "engine answered 503: engine overloaded ", err.message
            assert upstream.idle_count() == 1, "a complete 5xx answer keeps the connection"
            with failure() as caught:
                await upstream.open(engine.url("/fail-no-body"), b"{}", HEADERS, 10)
            assert caught[0].message == "engine answered 500: (no body)", caught[0].message
            await until(lambda: engine.gone == 1, lambda: f"engine {engine}")
    run(scenario)


# --------------------------------------------------------------------------- the pool


def test_keep_alive_reuse_is_lifo(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            a, b = await asyncio.gather(
                upstream.open(engine.url("/echo"), b"a", HEADERS, 10),
                upstream.open(engine.url("/echo"), b"b", HEADERS, 10))
            conns = {dict(r.headers)[b"x-conn"] for r in (a, b)}
            assert len(conns) == 2, f"two requests at once need two connections: {conns}"
            a.close()
            b.close()
            assert upstream.idle_count() == 2
            for i in range(3):
                c = await upstream.open(engine.url("/echo"), b"c%d" % i, HEADERS, 10)
                assert dict(c.headers)[b"x-conn"] == dict(b.headers)[b"x-conn"], (
                    "the most recently released connection is reused first", c.headers)
                c.close()
            assert engine.connections == 2, engine
    run(scenario)


def test_unfinished_answer_is_not_pooled(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/stream"), b"{}", HEADERS, 10)
            response.close()  # the body was not read to the end
            assert upstream.idle_count() == 0
            await until(lambda: engine.gone == 1, lambda: f"engine {engine}")
    run(scenario)


def test_idle_connections_are_closed_after_the_idle_timeout(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client(idle_timeout_s=0.4) as (engine, upstream):
            response = await upstream.open(engine.url("/echo"), b"x", HEADERS, 10)
            await read_all(response)
            response.close()
            assert upstream.idle_count() == 1
            await until(lambda: engine.closed == 1,
                        lambda: f"idle {upstream.idle_count()}, engine {engine}")
            assert upstream.idle_count() == 0
    run(scenario)


def test_a_connection_the_engine_closed_while_idle_leaves_the_pool(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/close-when-idle"), b"x", HEADERS, 10)
            await read_all(response)
            response.close()
            await until(lambda: upstream.idle_count() == 0,
                        lambda: f"idle {upstream.idle_count()}, engine {engine}")
            response = await upstream.open(engine.url("/echo"), b"y", HEADERS, 10)
            assert await read_all(response) == b"y"
            assert engine.connections == 2, engine
    run(scenario)


def test_a_pooled_connection_closed_as_the_request_goes_out_is_retried_once(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/idle-drop"), b"x", HEADERS, 10)
            await read_all(response)
            response.close()
            # The engine drops the pooled connection when this request reaches it: no byte of
            # an answer came back, so the client sends it again on a new connection.
            response = await upstream.open(engine.url("/echo"), b"again", HEADERS, 10)
            assert await read_all(response) == b"again"
            assert (engine.dropped, engine.connections) == (1, 2), engine
            assert [(s.conn, s.path) for s in engine.requests] == [(0, "/idle-drop"),
                                                                 (1, "/echo")], engine
    run(scenario)


def test_no_retry_once_an_answer_began_or_on_a_new_connection(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/partial-on-reuse"), b"x", HEADERS, 10)
            await read_all(response)
            response.close()
            with failure() as caught:  # reused, but a byte of the answer came: not retried
                await upstream.open(engine.url("/echo"), b"y", HEADERS, 10)
            assert engine.connections == 1, (caught, engine)
            with failure() as caught:  # a new connection reset before answering: not retried
                await upstream.open(engine.url("/reset-before"), b"z", HEADERS, 10)
            assert "ConnectionResetError" in caught[0].message or "closed" in caught[0].message, (
                caught[0].message)
            assert engine.connections == 2, engine
    run(scenario)


# --------------------------------------------------------------------------- failures


def test_refused_connection(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: connections are refused
            upstream = Upstream()
            with failure() as caught:
                await upstream.open(f"http://127.0.0.1:{port}/v1", b"{}", HEADERS, 10)
            await upstream.close()
        assert "cannot connect to 127.0.0.1" in caught[0].message, caught[0].message
        assert caught[0].retryable
    run(scenario)


def test_slow_first_byte_times_out_and_drops_the_connection(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            for path in ("/slow", "/slow-body"):  # no answer; a status line but no body
                with failure() as caught:
                    await upstream.open(engine.url(path), b"{}", HEADERS, 0.3)
                assert caught[0].message == "no first byte within 0.3s", caught[0].message
            await until(lambda: engine.gone == 2, lambda: f"engine {engine}")
            assert upstream.idle_count() == 0
    run(scenario)


def test_cancelled_open_drops_the_connection(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            task = asyncio.ensure_future(upstream.open(engine.url("/slow"), b"{}", HEADERS, 30))
            await until(lambda: len(engine.requests) == 1, lambda: f"engine {engine}")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: engine.gone == 1, lambda: f"engine {engine}")
    run(scenario)


def test_reset_or_early_close_after_the_first_byte_breaks_rest(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        for path, expected in (("/reset-mid", "Error"),
                               ("/eof-mid", "closed the connection before the end")):
            async with engine_and_client() as (engine, upstream):
                response = await upstream.open(engine.url(path), b"{}", HEADERS, 10)
                assert response.first == b"0123456789"
                engine.release.set()
                with pytest.raises(UpstreamBroken) as info:
                    async for _ in response.rest():
                        pass
                assert expected in str(info.value), (path, str(info.value))
                response.abort()
                assert upstream.idle_count() == 0
    run(scenario)


def test_malformed_and_oversized_answers_fail_before_the_first_byte(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            with failure() as caught:
                await upstream.open(engine.url("/malformed"), b"{}", HEADERS, 10)
            assert caught[0].message.startswith("malformed response from the engine"), (
                caught[0].message)
            with failure() as caught:
                await upstream.open(engine.url("/huge-head"), b"{}", HEADERS, 10)
            assert caught[0].message == "response head longer than 65536 bytes", (
                caught[0].message)
            await until(lambda: engine.closed == 2, lambda: f"engine {engine}")
    run(scenario)


def test_abort_mid_stream_closes_the_connection(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/stream"), b"{}", HEADERS, 10)
            response.abort()
            await until(lambda: engine.gone == 1, lambda: f"engine {engine}")
            assert upstream.idle_count() == 0
    run(scenario)


def test_bad_urls_and_headers_are_refused_without_sending(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        upstream = Upstream()
        for url in ("https://127.0.0.1:1/v1", "127.0.0.1:8000/v1", "http://h:99999/v1"):
            with failure() as caught:
                await upstream.open(url, b"{}", HEADERS, 10)
            assert not caught[0].retryable and url in caught[0].message, caught[0].message
        async with engine_and_client() as (engine, upstream):
            with failure() as caught:
                await upstream.open(engine.url("/echo"), b"{}", {"x-a": "1\r\nx-b: 2"}, 10)
            assert "line break" in caught[0].message, caught[0].message
            assert engine.connections == 0, engine
        await upstream.close()
    run(scenario)


# --------------------------------------------------------------------------- backpressure


def test_a_slow_reader_pauses_the_engine_and_memory_stays_bounded(
        run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with engine_and_client() as (engine, upstream):
            response = await upstream.open(engine.url("/big"), b"{}", HEADERS, 10)
            conn = response._conn
            last, still = -1, 0
            while still < 30:  # the engine's progress stops while nobody reads
                await asyncio.sleep(0.02)
                still = still + 1 if engine.big_sent == last else 0
                last = engine.big_sent
            assert engine.big_sent < BIG_CHUNKS * BIG_CHUNK // 2, engine.big_sent
            assert conn.paused and conn.buffered <= PAUSE_AT + BIG_CHUNK, (
                conn.paused, conn.buffered)
            digest = hashlib.sha256(response.first)
            total = len(response.first)
            async for chunk in response.rest():
                assert conn.buffered <= PAUSE_AT + BIG_CHUNK, conn.buffered
                digest.update(chunk)
                total += len(chunk)
            expected = hashlib.sha256(b"".join(_big_piece(i) for i in range(BIG_CHUNKS)))
            assert total == BIG_CHUNKS * BIG_CHUNK, total
            assert digest.hexdigest() == expected.hexdigest()
            response.close()
            assert upstream.idle_count() == 1
    run(scenario)
