"""The hop to the engine: pooled HTTP/1.1 on asyncio.Protocol, first byte awaited before relaying.

A lean client rather than aiohttp: on this path aiohttp cost ~537 µs of CPU per request where an
``asyncio.Protocol`` client costs ~57 µs (bench/README.md, gateway benchmark), and the gateway's
bar is ≤ 1 ms added. It does only what the gateway needs: a POST with a Content-Length body, one
request per connection at a time, and a response framed by Content-Length, chunked encoding or
the connection's close, parsed by httptools and relayed chunk by chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

from services.api.gateway.deadlines import Deadlines

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer",
                        b"upgrade", b"proxy-authenticate", b"proxy-authorization",
                        b"content-length", b"content-encoding", b"date", b"server"})
MAX_HEAD_BYTES = 64 * 1024
"""A response whose status line and headers exceed this is refused."""
PAUSE_AT = 256 * 1024
"""Body bytes read but not yet taken by the relay at which reading from the engine pauses."""
PEEK_BYTES = 300
PEEK_S = 0.5
"""How long a 5xx answer's body is awaited for the error message."""
MAX_TARGETS = 4096
"""Parsed URLs kept; the cache starts over beyond this (engines come and go)."""

_Key = tuple[str, int]


class UpstreamFailed(Exception):
    """The engine gave no usable first byte; ``retryable`` when another engine may do."""

    def __init__(self, message: str, *, status: int = 0, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


class UpstreamBroken(Exception):
    """The engine's answer broke off after its first byte (reset, early close, bad framing)."""


class _Stale(Exception):
    """A connection reused from the pool was closed by the engine before any response byte."""


class _Target:
    """One engine URL, parsed once: pool key and the constant start of each request."""

    __slots__ = ("head", "key")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamFailed(f"cannot send to {url!r}: need an http://host:port/path URL",
                                 retryable=False)
        try:
            port = parts.port or 80
        except ValueError:
            raise UpstreamFailed(f"cannot send to {url!r}: bad port", retryable=False) from None
        host = parts.hostname
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.key: _Key = (host, port)
        self.head = f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n".encode("latin-1")

    def request(self, body: bytes, headers: dict[str, str]) -> bytes:
        """The exact bytes of one request, written in one go."""
        extra = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
            raise UpstreamFailed(f"header with a line break: {headers!r}", retryable=False)
        return b"".join((self.head, extra.encode("latin-1"),
                         b"content-length: %d\r\n\r\n" % len(body), body))


class _Connection(asyncio.Protocol):
    """One keep-alive TCP connection to an engine, carrying one exchange at a time."""

    def __init__(self, owner: Upstream, key: _Key, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self.pooled = False
        self.busy = False
        self.waiter: asyncio.Future[bool] | None = None
        self._begin()

    def _begin(self) -> None:
        """Forget the previous exchange."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.interim = False
        self.head_done = False
        self.head_bytes = 0
        self.framed = False
        self.keep_alive = False
        self.complete = False
        self.answered = False
        self.error: str | None = None
        self.pending: list[bytes] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Requests and answers are small writes; Nagle would hold them for the peer's ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes nobody asked for: the engine is out of step; this connection is done.
            self.keep_alive = False
            self._close_transport(abort=True)
            return
        self.answered = True
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the engine switched protocols")
            return
        except httptools.HttpParserError as err:
            self._fail(f"malformed response from the engine: {err}")
            return
        if not self.head_done and self.head_bytes > MAX_HEAD_BYTES:
            self._fail(f"response head longer than {MAX_HEAD_BYTES} bytes")
            return
        if self.pending:
            pending = self.pending
            chunk = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self.chunks.append(chunk)
            self.buffered += len(chunk)
            if self.buffered > PAUSE_AT and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._wake()
        elif self.complete or (self.head_done and self.status >= 500):
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._forget(self)
        if self.busy and not self.complete and self.error is None:
            if exc is None and self.head_done and not self.framed:
                self.complete = True  # a body delimited by the connection's close
            elif exc is not None:
                self.error = f"{type(exc).__name__}: {exc}"
            elif not self.answered:
                self.error = "the engine closed the connection before answering"
            else:
                self.error = "the engine closed the connection before the end of its answer"
            self._wake()

    # ------------------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer after a chunked body; the headers were handed over already
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"content-length" or (name == b"transfer-encoding"
                                             and b"chunked" in value.lower()):
                self.framed = True
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # informational (100, 103): skipped, the real answer follows
            self.interim = True
            self.headers = []
            self.framed = False
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.pending.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True

    # ------------------------------------------------------------ the exchange

    def send(self, request: bytes) -> None:
        """Start an exchange: write the whole request."""
        self._begin()
        self.busy = True
        assert self.transport is not None
        self.transport.write(request)

    def settled(self) -> bool:
        """Whether the answer is far enough along to hand over (or failed)."""
        return bool(self.chunks or self.complete or self.error is not None
                    or (self.head_done and self.status >= 500))

    async def wait(self, until: float | None) -> bool:
        """Wait for news from the engine; False when loop time ``until`` came first."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self.waiter = fut
        deadlines = self.owner.deadlines
        if until is not None:
            deadlines.set(self, until, lambda: _expire(fut))
        try:
            return await fut
        finally:
            self.waiter = None
            if until is not None:
                deadlines.clear(self)

    def take(self) -> bytes:
        """Every body byte read so far that the relay has not taken."""
        chunks = self.chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.error is None and not self.lost
                and not self.paused and self.transport is not None
                and not self.transport.is_closing() and not self.transport.get_write_buffer_size())

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.keep_alive = False
        self._close_transport(abort=True)
        self._wake()

    def _close_transport(self, *, abort: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class UpstreamResponse:
    """An engine's answer whose status and first body chunk have arrived."""

    __slots__ = ("_conn", "first", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], first: bytes,
                 conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        self.first = first
        self._conn = conn

    def ended(self) -> bool:
        """The whole body has been read and handed over (``rest`` would yield nothing)."""
        conn = self._conn
        return conn.complete and not conn.chunks

    async def rest(self) -> AsyncIterator[bytes]:
        """The body after the first chunk, de-chunked, as the engine sends it."""
        conn = self._conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise UpstreamBroken(conn.error)
            else:
                await conn.wait(None)

    def close(self) -> None:
        """Return the connection to the pool (body fully read) or drop it (unfinished)."""
        self._conn.owner._release(self._conn)

    def abort(self) -> None:
        """Drop the connection without reading further (the client went away)."""
        self._conn.busy = False
        self._conn._close_transport(abort=True)


class Upstream:
    """Sends requests to engines over keep-alive connections pooled per (host, port)."""

    def __init__(self, *, connect_timeout_s: float = 3.0, idle_timeout_s: float = 60.0,
                 max_idle_per_host: int = 256) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[_Key, list[_Connection]] = {}
        """Idle connections per engine, most recently used last (taken from the end)."""
        self._open: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.deadlines = Deadlines()
        """First-byte timeouts (coarse: checked every tenth of a second)."""

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn._close_transport(abort=conn.busy)
        self._idle.clear()

    async def open(self, url: str, body: bytes, headers: dict[str, str],
                   first_byte_timeout_s: float) -> UpstreamResponse:
        """POST ``body`` and wait for the status and first body chunk.

        Raises UpstreamFailed: retryable for refused/reset connections, malformed answers,
        5xx answers and a first byte later than ``first_byte_timeout_s`` (which covers the
        connect too); not retryable for 4xx answers, which are the client's to see (returned,
        not raised).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + first_byte_timeout_s
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        request = target.request(body, headers)
        conn = self._take_idle(target.key)
        if conn is not None:
            try:
                return await self._exchange(conn, request, deadline, first_byte_timeout_s,
                                            reused=True)
            except _Stale:
                # Retried: a request written on a connection taken from the idle pool that
                # closed or reset before one byte of an answer came. An HTTP/1.1 server closes
                # a keep-alive connection only between requests (keep-alive timeout, restart),
                # so the request raced that close onto a socket nobody reads any more. An
                # engine that read it and died looks the same; its new connection is then
                # refused, which is the UpstreamFailed the gateway retries elsewhere anyway.
                # Once, on a new connection; never after a response byte or a timeout.
                pass
        conn = await self._connect(target.key, loop, deadline, first_byte_timeout_s)
        return await self._exchange(conn, request, deadline, first_byte_timeout_s,
                                    reused=False)

    def idle_count(self) -> int:
        """Idle pooled connections, all engines together."""
        return sum(len(conns) for conns in self._idle.values())

    def _target(self, url: str) -> _Target:
        target = _Target(url)
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        self._targets[url] = target
        return target

    def _take_idle(self, key: _Key) -> _Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            conn.pooled = False
            if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, key: _Key, loop: asyncio.AbstractEventLoop, deadline: float,
                       first_byte_timeout_s: float) -> _Connection:
        if self._closed:
            raise UpstreamFailed("the gateway is shutting down", retryable=False)
        conn = _Connection(self, key, loop)
        limit = min(self.connect_timeout_s, deadline - loop.time())
        try:
            async with asyncio.timeout(limit):
                transport, _ = await loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError:
            if limit < self.connect_timeout_s:
                raise UpstreamFailed(f"no first byte within {first_byte_timeout_s:g}s "
                                     "(still connecting)") from None
            raise UpstreamFailed(f"no connection to {key[0]}:{key[1]} within "
                                 f"{self.connect_timeout_s:g}s") from None
        except OSError as err:
            raise UpstreamFailed(f"cannot connect to {key[0]}:{key[1]}: "
                                 f"{type(err).__name__}: {err.strerror or err}") from None
        # uvloop may call connection_made only after create_connection has returned.
        conn.transport = transport
        self._open.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, request: bytes, deadline: float,
                        first_byte_timeout_s: float, *, reused: bool) -> UpstreamResponse:
        conn.send(request)
        try:
            while not conn.settled():
                if not await conn.wait(deadline):
                    conn._close_transport(abort=True)
                    raise UpstreamFailed(f"no first byte within {first_byte_timeout_s:g}s")
            if conn.error is not None:
                conn._close_transport(abort=True)
                if reused and not conn.answered:
                    raise _Stale
                raise UpstreamFailed(conn.error)
            if conn.status >= 500:
                detail = await self._peek(conn, deadline)
                self._release(conn)
                raise UpstreamFailed(f"engine answered {conn.status}: {detail}",
                                     status=conn.status)
        except asyncio.CancelledError:
            conn._close_transport(abort=True)
            raise
        return UpstreamResponse(conn.status, conn.headers, conn.take() if conn.chunks else b"",
                                conn)

    async def _peek(self, conn: _Connection, deadline: float) -> str:
        """The start of an error answer's body, for the message."""
        until = min(deadline, conn.loop.time() + PEEK_S)
        while not (conn.chunks or conn.complete or conn.error is not None):
            if not await conn.wait(until):
                break
        raw = conn.take()[:PEEK_BYTES] if conn.chunks else b""
        if not raw:
            return "(no body)"
        return raw.decode("utf-8", errors="replace").replace("\n", " ")

    def _release(self, conn: _Connection) -> None:
        """Pool a connection whose answer was read to the end; close any other."""
        conn.busy = False
        if self._closed or not conn.reusable():
            conn._close_transport(abort=not conn.complete)
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= self.max_idle_per_host:
            conn._close_transport(abort=False)
            return
        conn.idle_since = conn.loop.time()
        conn.pooled = True
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.idle_timeout_s / 4, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: it leaves the books (and the pool, if idle there)."""
        self._open.discard(conn)
        if conn.pooled:
            conn.pooled = False
            conns = self._idle.get(conn.key)
            if conns is not None and conn in conns:
                conns.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle longer than ``idle_timeout_s`` (oldest first in each list)."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        for key, conns in list(self._idle.items()):
            while conns:
                if loop.time() - conns[0].idle_since < self.idle_timeout_s:
                    break
                conn = conns.pop(0)
                conn.pooled = False
                conn._close_transport(abort=False)
            if not conns:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweeper = loop.call_later(self.idle_timeout_s / 4, self._sweep)
