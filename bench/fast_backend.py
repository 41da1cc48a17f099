"""A minimal fake OpenAI engine for the gateway benchmark: cheap enough that proxies are measured.

Raw ``asyncio.Protocol`` on uvloop, no framework, answers precomputed:

- ``POST /v1/chat/completions`` and ``/v1/completions``: one fixed JSON answer, or with
  ``"stream": true`` a chunked ``text/event-stream`` of ``--chunks`` events ``--gap-ms`` apart
  (the first at once, like an engine whose prefill costs nothing), then ``data: [DONE]``;
- ``GET /metrics``: vLLM's gauges (running = requests in flight here, nothing waiting) so
  the collector scores the backend like an engine;
- ``GET /health`` and ``GET /v1/models``.

Run ``python bench/fast_backend.py --port 9001 [--chunks 20 --gap-ms 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import cast

MODEL = "bench-model"
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
MAX_HEAD = 64 * 1024


@dataclass
class Backend:
    """What every connection of one backend process shares."""

    name: str
    chunks: int
    gap_s: float
    inflight: int = 0
    served: int = 0
    chat: bytes = b""
    completion: bytes = b""
    chat_events: list[bytes] = field(default_factory=list)
    completion_events: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        created = int(time.time())
        usage = {"prompt_tokens": 12, "completion_tokens": self.chunks,
                 "total_tokens": 12 + self.chunks}
        text = "".join(f"tok{i} " for i in range(self.chunks))
        self.chat = _json({
            "id": f"chatcmpl-{self.name}", "object": "chat.completion", "created": created,
            "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                         "message": {"role": "assistant", "content": text}}],
            "usage": usage})
        self.completion = _json({
            "id": f"cmpl-{self.name}", "object": "text_completion", "created": created,
            "model": MODEL, "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                         "logprobs": None}], "usage": usage})
        for i in range(self.chunks):
            last = i == self.chunks - 1
            self.chat_events.append(_event({
                "id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk",
                "created": created, "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                             "finish_reason": "stop" if last else None}]}))
            self.completion_events.append(_event({
                "id": f"cmpl-{self.name}", "object": "text_completion", "created": created,
                "model": MODEL, "choices": [{"index": 0, "text": f"tok{i} ",
                                             "finish_reason": "stop" if last else None}]}))

    def metrics(self) -> bytes:
        labels = f'engine="0",model_name="{MODEL}"'
        return (f"# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{{{labels}}} {float(self.inflight)}\n"
                f"# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
                f"# TYPE vllm:kv_cache_usage_perc gauge\n"
                f"vllm:kv_cache_usage_perc{{{labels}}} 0.05\n"
                f"# TYPE vllm:request_success_total counter\n"
                f"vllm:request_success_total{{{labels}}} {float(self.served)}\n").encode()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _event(value: object) -> bytes:
    return _chunk(b"data: " + _json(value) + b"\n\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def _response(status: str, body: bytes, content_type: bytes = b"application/json",
              close: bool = False) -> bytes:
    head = (b"HTTP/1.1 %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n"
            % (status.encode(), content_type, len(body)))
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


class _Connection(asyncio.Protocol):
    """One client connection; requests are answered in order, one at a time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming: asyncio.TimerHandle | None = None
        self.busy = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
            self.streaming = None
        if self.busy:
            self.busy = False
            self.backend.inflight -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        """Answer every complete request in the buffer (stops while a stream is running)."""
        while self.transport is not None and not self.busy:
            try:
                request = _take_request(self.buf)
            except ValueError as err:
                self._write(_response("400 Bad Request", str(err).encode(), b"text/plain",
                                      close=True))
                self.transport.close()
                return
            if request is None:
                return
            self._answer(*request)

    def _answer(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        backend = self.backend
        self.close_after = close
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            chat = path == b"/v1/chat/completions"
            backend.served += 1
            if STREAM_RE.search(body):
                self._start_stream(backend.chat_events if chat else backend.completion_events)
                return
            self._write(_response("200 OK", backend.chat if chat else backend.completion,
                                  close=close))
        elif method == b"GET" and path == b"/metrics":
            self._write(_response("200 OK", backend.metrics(),
                                  b"text/plain; version=0.0.4; charset=utf-8", close=close))
        elif method in (b"GET", b"HEAD") and path == b"/health":
            self._write(_response("200 OK", b"", close=close))
        elif method == b"GET" and path == b"/v1/models":
            self._write(_response("200 OK", _json({"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}),
                close=close))
        else:
            self._write(_response("404 Not Found", _json({"error": {
                "message": f"no route {method.decode()} {path.decode()}", "type": "not_found",
                "param": None, "code": 404}}), close=close))
        if close and self.transport is not None:
            self.transport.close()

    def _start_stream(self, events: list[bytes]) -> None:
        self.busy = True
        self.backend.inflight += 1
        self._write(SSE_HEAD + events[0])
        self._stream(events, 1)

    def _stream(self, events: list[bytes], index: int) -> None:
        if index < len(events):
            self.streaming = self.loop.call_later(self.backend.gap_s, self._send_event, events,
                                                  index)
            return
        self.streaming = None
        self.busy = False
        self.backend.inflight -= 1
        if self.close_after and self.transport is not None:
            self.transport.close()
            return
        self._next()

    def _send_event(self, events: list[bytes], index: int) -> None:
        last = index == len(events) - 1
        self._write(events[index] + DONE if last else events[index])
        self._stream(events, index + 1)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


def _take_request(buf: bytearray) -> tuple[bytes, bytes, bytes, bool] | None:
    """(method, path, body, close) of the first complete request, removed from ``buf``."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too large")
        return None
    head = bytes(buf[:head_end])
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ValueError(f"bad request line {request_line[:100]!r}")
    lower = head.lower()
    close = b"\r\nconnection: close" in lower or parts[2] == b"HTTP/1.0"
    start = head_end + 4
    if b"\r\ntransfer-encoding: chunked" in lower:
        decoded = _dechunk(buf, start)
        if decoded is None:
            return None
        body, end = decoded
    else:
        length = 0
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            value_end = lower.find(b"\r\n", at + 2)
            length = int(lower[at + 17:value_end if value_end > 0 else len(lower)])
        end = start + length
        if len(buf) < end:
            return None
        body = bytes(buf[start:end])
    del buf[:end]
    return parts[0], parts[1], body, close


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at ``pos``: (body, end offset) or None if incomplete."""
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


async def start_server(host: str, port: int, backend: Backend) -> asyncio.Server:
    """Listen on ``host:port`` (0: any free port) in the running loop."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(backend), host, port, backlog=1024,
                                    reuse_address=True)


async def serve(host: str, port: int, backend: Backend) -> None:
    """Serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await start_server(host, port, backend)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fast_backend {backend.name} listening on http://{host}:{port} "
          f"({backend.chunks} chunks x {backend.gap_s * 1000:g} ms)", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="b")
    parser.add_argument("--chunks", type=int, default=20, help="SSE events per stream")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause between SSE events")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.gap_ms < 0:
        parser.error("--chunks must be >= 1 and --gap-ms >= 0")
    backend = Backend(name=args.name, chunks=args.chunks, gap_s=args.gap_ms / 1000)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, backend))
    else:
        uvloop.run(serve(args.host, args.port, backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
