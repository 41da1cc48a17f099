"""The benchmark's HTTP client: trace requests as chat bodies, one streamed request timed.

TTFT is the time to the first chunk with content (not the role chunk, not the response
headers), e2e the time to ``data: [DONE]``; both from when the request was sent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import msgspec

from services.enginesim.virtual import TraceRequest

CHAT_PATH = "/v1/chat/completions"
CHAT_OVERHEAD_TOKENS = 4
"""The engine counts a one-message chat as its words plus 2 specials and 2 role tokens."""
REFUSED = frozenset({429, 503})
_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


def prompt_text(index: int, tokens: int) -> str:
    """About ``tokens`` prompt tokens: three-letter words (4 characters a token, as the
    gateway's chars/4 estimate assumes), the first unique to the request."""
    words = max(1, tokens - CHAT_OVERHEAD_TOKENS)
    return " ".join([f"r{index % 100:02d}", *(["tok"] * (words - 1))])


def chat_body(model: str, index: int, item: TraceRequest) -> bytes:
    """The streamed chat request of trace item ``index`` (``max_tokens`` = its output)."""
    return json.dumps({
        "model": model, "stream": True, "max_tokens": item.output_tokens,
        "messages": [{"role": "user", "content": prompt_text(index, item.input_tokens)}],
    }, separators=(",", ":")).encode()


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []


_chunk = msgspec.json.Decoder(_Chunk)


def has_content(payload: bytes) -> bool:
    """Whether an SSE ``data:`` payload carries generated text."""
    if payload.startswith(b"[DONE]"):
        return False
    try:
        chunk = _chunk.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    for choice in chunk.choices:
        if (choice.delta is not None and choice.delta.content) or choice.text:
            return True
    return False


@dataclass(slots=True)
class Sent:
    """How one HTTP request went; times in seconds from sending it (inf: never)."""

    status: int = 0
    """HTTP status, 0 when none came (connection refused, reset, timeout)."""
    headers_s: float = math.inf
    ttft: float = math.inf
    e2e: float = math.inf
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and math.isfinite(self.e2e)

    @property
    def refused(self) -> bool:
        return self.status in REFUSED


Hook = Callable[[Sent], None]


async def stream_chat(session: aiohttp.ClientSession, url: str, body: bytes, *,
                      timeout_s: float, on_headers: Hook | None = None,
                      on_first: Hook | None = None) -> Sent:
    """POST a streamed chat request to ``url`` and time it (never raises for HTTP trouble)."""
    out = Sent()
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=_HEADERS,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            out.status = resp.status
            out.headers_s = time.perf_counter() - start
            if on_headers is not None:
                on_headers(out)
            if resp.status != 200:
                text = await resp.read()
                out.error = f"HTTP {resp.status}: {text[:160].decode(errors='replace')}"
                return out
            pending = b""
            tail = b""
            async for data in resp.content.iter_any():
                if math.isinf(out.ttft):
                    pending += data
                    while (newline := pending.find(b"\n")) >= 0:
                        line, pending = pending[:newline], pending[newline + 1:]
                        if line.startswith(b"data: ") and has_content(line[6:].strip()):
                            out.ttft = time.perf_counter() - start
                            if on_first is not None:
                                on_first(out)
                            break
                tail = (tail + data)[-48:]
                if b"data: [DONE]" in tail:
                    out.e2e = time.perf_counter() - start
            if math.isinf(out.e2e):
                out.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        out.error = f"{type(err).__name__}: {err}"[:200]
    return out
