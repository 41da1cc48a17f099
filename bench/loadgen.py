"""A small HTTP/1.1 keep-alive load generator in pure asyncio.

N connections each send the same request back-to-back (one in flight per connection, no
pipelining) for a duration or a request count, after an optional warm-up. Every response is
parsed (status line, Content-Length or chunked body) and timed. Built on ``asyncio.Protocol``
(and uvloop when installed) so the client costs as little CPU as Python allows: a load tool
that burns the cores it shares with the server under test skews every comparison.

Run it as its own process so it does not share an event loop with the server::

    python bench/loadgen.py http://127.0.0.1:8080/scheduler/select \\
        --body '{"pool_name":"p1","members":["10.0.0.1:8000"]}' -c 32 -d 5 --warmup 1

``--json`` prints one JSON object (what ``bench/select_bench.py`` reads). ``--sse`` reads each
answer as a server-sent event stream and also times every event as its bytes arrive: time to the
first event and the gaps between events (what ``bench/gateway_bench.py`` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import sys
import time
from collections.abc import Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

T = TypeVar("T")

MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class Target:
    """Where requests go."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port/path URL, got {url!r}")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return cls(parts.hostname, parts.port or 80, path)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def build_request(target: Target, body: bytes, *, method: str = "POST",
                  content_type: str = "application/json", close: bool = False) -> bytes:
    """The exact bytes of one request (sent unchanged on every iteration)."""
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.authority}",
             "User-Agent: llmsched-loadgen", "Accept: */*"]
    if body or method in ("POST", "PUT", "PATCH"):
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    close: bool
    events: tuple[int, ...] = ()
    """SSE only: arrival time (perf_counter ns) of each ``data:`` event but ``[DONE]``."""
    done: bool = False
    """SSE only: the stream ended with ``data: [DONE]``."""


class ResponseReader:
    """Incremental parser of one HTTP/1.1 response at a time from a byte buffer."""

    __slots__ = ("_body_start", "_chunked", "_close", "_length", "_status")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._body_start = -1
        self._length = 0
        self._chunked = False
        self._close = False

    def take(self, buf: bytearray, now_ns: int = 0) -> Response | None:
        """A complete response removed from the front of ``buf``, or None if more is needed."""
        if self._body_start < 0 and not self._parse_head(buf):
            return None
        start = self._body_start
        if self._chunked:
            parsed = _dechunk(buf, start)
            if parsed is None:
                return None
            body, end = parsed
        else:
            end = start + self._length
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
        response = Response(self._status, body, self._close)
        del buf[:end]
        self._reset()
        return response

    def _parse_head(self, buf: bytearray) -> bool:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        if 100 <= status < 200:  # interim response: drop it and wait for the real one
            del buf[:head_end + 4]
            return self._parse_head(buf)
        self._status = status
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                self._length = int(value)
            elif name == "transfer-encoding":
                self._chunked = "chunked" in value.lower()
            elif name == "connection":
                self._close = "close" in value.lower()
        self._body_start = head_end + 4
        return True


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``: (body, end offset) or None if incomplete."""
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", pos - 2)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos:pos + size]))
        pos += size + 2


_SIZE_LINE, _TRAILER, _CRLF = -1, -2, -3
"""Chunked-body states of SseReader besides "n data bytes left in this chunk"."""


class SseReader(ResponseReader):
    """Like ResponseReader, but decodes the body as it arrives and timestamps each SSE event.

    An event ends with a blank line (``\\n\\n``, as vLLM and OpenAI send them); the event's
    time is when the read that completed it arrived, whatever the HTTP chunking around it.
    """

    __slots__ = ("_chunk_left", "_decoded", "_done", "_event_start", "_events", "_got")

    def _reset(self) -> None:
        super()._reset()
        self._decoded = bytearray()
        self._event_start = 0
        self._events: list[int] = []
        self._done = False
        self._chunk_left = _SIZE_LINE
        self._got = 0

    def take(self, buf: bytearray, now_ns: int = 0) -> Response | None:
        if self._body_start < 0:
            if not self._parse_head(buf):
                return None
            del buf[:self._body_start]
            self._body_start = 0
        if self._chunked:
            complete = self._feed_chunked(buf)
        else:
            n = min(len(buf), self._length - self._got)
            self._decoded += buf[:n]
            del buf[:n]
            self._got += n
            complete = self._got >= self._length
        self._scan(now_ns)
        if not complete:
            return None
        response = Response(self._status, bytes(self._decoded), self._close,
                            tuple(self._events), self._done)
        self._reset()
        return response

    def _feed_chunked(self, buf: bytearray) -> bool:
        """Move the chunk data in ``buf`` to the decoded body; True once the body ended."""
        while True:
            if self._chunk_left > 0:
                if not buf:
                    return False
                n = min(len(buf), self._chunk_left)
                self._decoded += buf[:n]
                del buf[:n]
                self._chunk_left -= n
                if self._chunk_left:
                    return False
                self._chunk_left = _CRLF
            if self._chunk_left == _CRLF:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise ValueError(f"chunk data not followed by CRLF: {bytes(buf[:20])!r}")
                del buf[:2]
                self._chunk_left = _SIZE_LINE
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            line = bytes(buf[:line_end])
            del buf[:line_end + 2]
            if self._chunk_left == _TRAILER:
                if not line:
                    return True
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise ValueError(f"bad chunk size line {line[:40]!r}") from None
            self._chunk_left = size if size > 0 else _TRAILER

    def _scan(self, now_ns: int) -> None:
        """Timestamp every event the decoded body completed since the last call."""
        data = self._decoded
        while (end := data.find(b"\n\n", self._event_start)) >= 0:
            event = bytes(data[self._event_start:end])
            self._event_start = end + 2
            payload = [line[5:].strip() for line in event.split(b"\n")
                       if line.startswith(b"data:")]
            if not payload:
                continue  # a comment or a field-only event
            if payload == [b"[DONE]"]:
                self._done = True
            else:
                self._events.append(now_ns)


@dataclass
class LoadResult:
    """What one run measured; latencies in milliseconds, over the measured window only."""

    url: str
    connections: int
    window_s: float
    requests: int
    """Successful (200, accepted body) responses completed inside the window."""
    errors: int
    """Non-200 answers, rejected bodies, failed connections and time-outs inside the window."""
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    completed_total: int
    """Every response, warm-up included (to spread server CPU time over requests)."""
    elapsed_s: float
    client_cpu_s: float
    """This process's CPU time during the window (near ``window_s`` = the client saturated)."""
    error_samples: list[str] = field(default_factory=list)
    events: int = 0
    """SSE only: events (``[DONE]`` excluded) of the successful streams."""
    ttfe_p50_ms: float = 0.0
    """SSE only: request sent → first event arrived."""
    ttfe_p90_ms: float = 0.0
    ttfe_p99_ms: float = 0.0
    gap_p50_ms: float = 0.0
    """SSE only: time between consecutive events of one stream."""
    gap_p90_ms: float = 0.0
    gap_p99_ms: float = 0.0
    gap_max_ms: float = 0.0
    gap_mean_ms: float = 0.0

    def summary(self) -> str:
        line = (f"{self.url} c={self.connections}: {self.rps:,.0f} req/s  p50 {self.p50_ms:.3f}"
                f" ms  p90 {self.p90_ms:.3f} ms  p99 {self.p99_ms:.3f} ms  max"
                f" {self.max_ms:.3f} ms  errors {self.errors}  ({self.requests} in"
                f" {self.window_s:.2f} s, client CPU {self.client_cpu_s:.2f} s)")
        if self.events:
            line += (f"\n  SSE: {self.events} events  first event p50 {self.ttfe_p50_ms:.3f} ms"
                     f"  p99 {self.ttfe_p99_ms:.3f} ms  gap p50 {self.gap_p50_ms:.3f} ms"
                     f"  p99 {self.gap_p99_ms:.3f} ms  max {self.gap_max_ms:.3f} ms")
        return line


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, round(q / 100.0 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Recorder:
    """Shared clock and tallies of all connections of one run."""

    def __init__(self, warmup_s: float, duration_s: float | None, max_requests: int | None,
                 reject: Iterable[bytes] = (), expect_events: int | None = None) -> None:
        now = time.perf_counter_ns()
        self.started_ns = now
        self.window_start_ns = now + int(warmup_s * 1e9)
        self.window_end_ns = (self.window_start_ns + int(duration_s * 1e9)
                              if duration_s is not None else None)
        self.max_requests = max_requests
        self.reject = frozenset(reject)
        self.expect_events = expect_events
        self.ttfe_ns: list[int] = []
        self.gaps_ns: list[int] = []
        self.events = 0
        self.issued_in_window = 0
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.completed_total = 0
        self.last_end_ns = self.window_start_ns
        self.error_samples: list[str] = []
        self.cpu_at_window_start: float | None = None
        self.cpu_at_window_end: float | None = None
        self.stopped = False

    def may_send(self, now: int) -> bool:
        """Whether a connection should issue another request (also tracks the window)."""
        if self.stopped:
            return False
        if now >= self.window_start_ns:
            if self.cpu_at_window_start is None:
                self.cpu_at_window_start = time.process_time()
            if self.window_end_ns is not None and now >= self.window_end_ns:
                self._stop()
                return False
            if self.max_requests is not None and self.issued_in_window >= self.max_requests:
                self._stop()
                return False
            self.issued_in_window += 1
        return True

    def _stop(self) -> None:
        self.stopped = True
        if self.cpu_at_window_end is None:
            self.cpu_at_window_end = time.process_time()

    def in_window(self, end_ns: int) -> bool:
        return end_ns >= self.window_start_ns and (self.window_end_ns is None
                                                   or end_ns <= self.window_end_ns)

    def done(self, start_ns: int, end_ns: int, response: Response) -> None:
        self.completed_total += 1
        if not self.in_window(end_ns):
            return
        self.last_end_ns = max(self.last_end_ns, end_ns)
        if response.status != 200:
            self.fail(end_ns, f"HTTP {response.status}: {response.body[:120]!r}")
        elif response.body in self.reject:
            self.fail(end_ns, f"rejected body {response.body[:120]!r}")
        elif self.expect_events is not None and not self._stream_ok(start_ns, end_ns, response):
            return
        else:
            self.latencies_ns.append(end_ns - start_ns)

    def _stream_ok(self, start_ns: int, end_ns: int, response: Response) -> bool:
        """Check an SSE answer (event count, ``[DONE]``) and keep its event timings."""
        events = response.events
        if not response.done or (self.expect_events and len(events) != self.expect_events):
            self.fail(end_ns, f"stream of {len(events)} events, [DONE] "
                      f"{'seen' if response.done else 'missing'} (expected "
                      f"{self.expect_events or 'any number of'} events): "
                      f"{response.body[-120:]!r}")
            return False
        if events:
            self.events += len(events)
            self.ttfe_ns.append(events[0] - start_ns)
            self.gaps_ns.extend(b - a for a, b in itertools.pairwise(events))
        return True

    def fail(self, end_ns: int, reason: str) -> None:
        if not self.in_window(end_ns):
            return
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(reason)


class _Client(asyncio.Protocol):
    """One keep-alive connection sending ``request`` again as soon as each answer is in."""

    def __init__(self, request: bytes, recorder: Recorder, finished: asyncio.Future[None],
                 sse: bool = False) -> None:
        self.request = request
        self.recorder = recorder
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.reader = SseReader() if sse else ResponseReader()
        self.sent_ns = 0
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send_next()

    def _send_next(self) -> None:
        now = time.perf_counter_ns()
        if not self.recorder.may_send(now):
            self.close()
            return
        self.sent_ns = now
        self.in_flight = True
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        end = time.perf_counter_ns()
        self.buf += data
        try:
            response = self.reader.take(self.buf, end)
        except ValueError as err:
            self.in_flight = False
            self.recorder.fail(end, f"bad response: {err}")
            self.close()
            return
        if response is None:
            return
        self.in_flight = False
        self.recorder.done(self.sent_ns, end, response)
        if response.close:
            self.close()  # the worker opens a new connection
        else:
            self._send_next()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.in_flight = False
            self.recorder.fail(time.perf_counter_ns(), f"connection lost: {exc or 'closed'}")
        if not self.finished.done():
            self.finished.set_result(None)


async def _connection(target: Target, request: bytes, recorder: Recorder,
                      clients: list[_Client], sse: bool) -> None:
    loop = asyncio.get_running_loop()
    while not recorder.stopped:
        finished: asyncio.Future[None] = loop.create_future()
        try:
            _, client = await loop.create_connection(
                functools.partial(_Client, request, recorder, finished, sse), target.host,
                target.port)
        except OSError as err:
            recorder.fail(time.perf_counter_ns(), f"connect: {err}")
            await asyncio.sleep(0.05)
            continue
        clients.append(client)
        await finished
        clients.remove(client)


async def run_load(url: str, body: bytes, *, connections: int = 1, duration_s: float | None = 5,
                   max_requests: int | None = None, warmup_s: float = 0.0,
                   method: str = "POST", content_type: str = "application/json",
                   reject: Iterable[bytes] = (), request_timeout_s: float = 10.0,
                   sse: bool = False, expect_events: int | None = None) -> LoadResult:
    """Run the load in the current event loop and return the measurements.

    ``sse``: answers are event streams, timed event by event; a stream without ``[DONE]``, or
    with other than ``expect_events`` events (when given), counts as an error.
    """
    if duration_s is None and max_requests is None:
        raise ValueError("give a duration or a request count")
    target = Target.parse(url)
    request = build_request(target, body, method=method, content_type=content_type)
    recorder = Recorder(warmup_s, duration_s, max_requests, reject,
                        (expect_events or 0) if sse else None)
    clients: list[_Client] = []
    workers = [asyncio.create_task(_connection(target, request, recorder, clients, sse))
               for _ in range(connections)]
    budget = warmup_s + (duration_s or 3600.0) + request_timeout_s
    _, pending = await asyncio.wait(workers, timeout=budget)
    if pending:  # requests that never got an answer: count them, drop their connections
        recorder.stopped = True
        for client in list(clients):
            if client.in_flight:
                client.in_flight = False
                recorder.errors += 1
                if len(recorder.error_samples) < MAX_ERROR_SAMPLES:
                    recorder.error_samples.append(f"no answer after {request_timeout_s} s")
            client.close()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    recorder.stopped = True
    if recorder.cpu_at_window_end is None:
        recorder.cpu_at_window_end = time.process_time()
    end_ns = (recorder.window_end_ns if recorder.window_end_ns is not None
              else recorder.last_end_ns)
    window_s = max((end_ns - recorder.window_start_ns) / 1e9, 1e-9)
    lat = sorted(recorder.latencies_ns)
    ttfe, gaps = sorted(recorder.ttfe_ns), sorted(recorder.gaps_ns)
    ms = 1e-6
    return LoadResult(
        url=url, connections=connections, window_s=round(window_s, 4), requests=len(lat),
        errors=recorder.errors, rps=round(len(lat) / window_s, 1),
        p50_ms=round(percentile(lat, 50) * ms, 4), p90_ms=round(percentile(lat, 90) * ms, 4),
        p99_ms=round(percentile(lat, 99) * ms, 4), max_ms=round((lat[-1] if lat else 0) * ms, 4),
        mean_ms=round((sum(lat) / len(lat) if lat else 0) * ms, 4),
        completed_total=recorder.completed_total,
        elapsed_s=round((time.perf_counter_ns() - recorder.started_ns) / 1e9, 4),
        client_cpu_s=round(recorder.cpu_at_window_end - (recorder.cpu_at_window_start
                                                         or recorder.cpu_at_window_end), 4),
        error_samples=recorder.error_samples,
        events=recorder.events,
        ttfe_p50_ms=round(percentile(ttfe, 50) * ms, 4),
        ttfe_p90_ms=round(percentile(ttfe, 90) * ms, 4),
        ttfe_p99_ms=round(percentile(ttfe, 99) * ms, 4),
        gap_p50_ms=round(percentile(gaps, 50) * ms, 4),
        gap_p90_ms=round(percentile(gaps, 90) * ms, 4),
        gap_p99_ms=round(percentile(gaps, 99) * ms, 4),
        gap_max_ms=round((gaps[-1] if gaps else 0) * ms, 4),
        gap_mean_ms=round((sum(gaps) / len(gaps) if gaps else 0) * ms, 4),
    )


async def request_once(url: str, body: bytes = b"", *, method: str = "POST",
                       timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). For readiness checks."""
    target = Target.parse(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port), timeout_s)
    try:
        writer.write(build_request(target, body, method=method, close=True))
        buf = bytearray()
        parser = ResponseReader()
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("connection closed before a full response")
                buf += chunk
                response = parser.take(buf)
                if response is not None:
                    return response.status, response.body
    finally:
        writer.close()


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (as the services run)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url", help="http://host:port/path")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", default="", help="request body (text)")
    body.add_argument("--body-file", type=Path, help="request body read from a file")
    parser.add_argument("-X", "--method", default="POST")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=None,
                        help="seconds to measure after the warm-up (default 5)")
    parser.add_argument("-n", "--requests", type=int, default=None,
                        help="stop after this many requests (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds not measured first")
    parser.add_argument("--reject-body", action="append", default=[],
                        help="count a 200 with exactly this body as an error (repeatable)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request time-out")
    parser.add_argument("--sse", action="store_true",
                        help="answers are SSE streams: time each event, require [DONE]")
    parser.add_argument("--expect-events", type=int, default=None,
                        help="with --sse: a stream with another number of events is an error")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None or args.requests else 5.0
    payload = args.body_file.read_bytes() if args.body_file else args.body.encode()

    async def go() -> LoadResult:
        return await run_load(args.url, payload, connections=args.connections,
                              duration_s=duration, max_requests=args.requests,
                              warmup_s=args.warmup, method=args.method,
                              content_type=args.content_type,
                              reject=[r.encode() for r in args.reject_body],
                              request_timeout_s=args.timeout, sse=args.sse,
                              expect_events=args.expect_events)

    result = run_fast(go())
    print(json.dumps(asdict(result)) if args.json else result.summary())
    return 0 if result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
