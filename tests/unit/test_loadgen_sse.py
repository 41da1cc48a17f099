"""bench/loadgen.py's SSE mode: event timing as bytes arrive, stream checks, a real backend."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


loadgen = _load("loadgen")
fast_backend = _load("fast_backend")

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def feed(reader: Any, pieces: list[tuple[bytes, int]], buf: bytearray) -> list[Any]:
    """Feed each piece at its time; every response completed along the way."""
    out = []
    for data, now in pieces:
        buf += data
        while (response := reader.take(buf, now)) is not None:
            out.append(response)
    return out


def test_events_are_stamped_when_the_read_completing_them_arrives() -> None:
    # event 2 is split across two HTTP chunks and two reads; [DONE] is not an event;
    # a comment line is not an event; the next response's bytes stay in the buffer.
    stream = (HEAD + chunk(b"data: one\n\n") + chunk(b": keep-alive\n\n")
              + chunk(b"data: tw") + chunk(b"o\n\ndata: three\n\n")
              + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    split_at = stream.index(b"o\n\ndata: three")
    buf = bytearray()
    reader = loadgen.SseReader()
    responses = feed(reader, [(stream[:split_at], 100), (stream[split_at:] + b"HTTP/1.1", 250)],
                     buf)
    assert len(responses) == 1, responses
    response = responses[0]
    assert response.status == 200 and response.done, response
    assert response.events == (100, 250, 250), response.events
    assert response.body.startswith(b"data: one\n\n: keep-alive"), response.body
    assert bytes(buf) == b"HTTP/1.1", buf


def test_byte_by_byte_and_content_length_bodies() -> None:
    body = b"data: a\n\ndata: b\n\ndata: [DONE]\n\n"
    raw = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
           % len(body)) + body
    reader = loadgen.SseReader()
    responses = feed(reader, [(raw[i:i + 1], i) for i in range(len(raw))], bytearray())
    assert len(responses) == 1, responses
    first_end = raw.index(b"data: a\n\n") + len(b"data: a\n\n") - 1
    second_end = raw.index(b"data: b\n\n") + len(b"data: b\n\n") - 1
    assert responses[0].events == (first_end, second_end), responses[0]
    assert responses[0].done and responses[0].body == body, responses[0]


def test_bad_chunk_framing_is_an_error() -> None:
    reader = loadgen.SseReader()
    with pytest.raises(ValueError, match="CRLF"):
        reader.take(bytearray(HEAD + b"3\r\nabcXY"), 0)
    with pytest.raises(ValueError, match="chunk size"):
        loadgen.SseReader().take(bytearray(HEAD + b"zz\r\n"), 0)


def test_recorder_checks_streams_and_keeps_gaps() -> None:
    recorder = loadgen.Recorder(0.0, None, None, expect_events=3)
    t = recorder.window_start_ns  # times inside the measured window

    def answer(body: bytes, events: tuple[int, ...], done: bool) -> None:
        response = loadgen.Response(200, body, False, tuple(t + e for e in events), done)
        recorder.done(t + 100, t + 170, response)

    answer(b"", (110, 130, 160), True)
    answer(b"x", (110, 120, 130), False)
    answer(b"y", (110,), True)
    assert recorder.latencies_ns == [70], recorder.latencies_ns
    assert (recorder.ttfe_ns, recorder.gaps_ns, recorder.events) == ([10], [20, 30], 3)
    assert recorder.errors == 2, recorder.error_samples
    assert "[DONE] missing" in recorder.error_samples[0], recorder.error_samples
    assert "stream of 1 events" in recorder.error_samples[1], recorder.error_samples


async def test_streams_from_the_fast_backend() -> None:
    backend = fast_backend.Backend(name="t", chunks=5, gap_s=0.02)
    server = await fast_backend.start_server("127.0.0.1", 0, backend)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await loadgen.run_load(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            b'{"model": "m", "stream": true}', connections=2, duration_s=None, max_requests=4,
            sse=True, expect_events=5, request_timeout_s=30)
        wrong = await loadgen.run_load(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            b'{"model": "m", "stream": true}', connections=1, duration_s=None, max_requests=1,
            sse=True, expect_events=6, request_timeout_s=30)
    finally:
        server.close()
    assert (result.requests, result.errors, result.events) == (4, 0, 20), result
    # the backend pauses 20 ms between events: gaps stamped at arrival cannot all be ~0
    assert result.gap_p50_ms >= 10, result
    assert result.ttfe_p50_ms < result.p50_ms, result
    assert (wrong.requests, wrong.errors) == (0, 1), wrong
    assert "stream of 5 events" in wrong.error_samples[0], wrong.error_samples
