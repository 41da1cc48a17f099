"""A stand-in engine /metrics endpoint (vLLM 0.32.0 or SGLang text) with run-time knobs.

``GET /metrics`` serves the text; ``GET /_control`` shows the knobs and ``PUT /_control``
changes them (JSON, same names as :class:`Control`); ``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from services.enginesim.promtext import Exposition
from services.enginesim.stats import Histogram
from shared.http_server import RunningServer, start_app
from shared.logs import setup_logging

Engine = Literal["vllm", "sglang"]
KvName = Literal["new", "old", "both"]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CONTENT_TYPE = b"text/plain; version=1.0.0; charset=utf-8"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
MAX_SERIES = 64
MAX_DELAY_S = 120.0


class Control(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /_control``: every field optional; absent fields keep their value."""

    waiting: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Waiting queue (split over the series)."""
    running: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Running requests (split over the series)."""
    kv_usage: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """KV usage ratio of the fullest series; series i reports kv_usage*(N-i)/N."""
    kv_name: KvName | None = None
    """vLLM only: ``new`` kv_cache_usage_perc, ``old`` gpu_cache_usage_perc, or ``both``."""
    series: Annotated[int, msgspec.Meta(ge=1, le=MAX_SERIES)] | None = None
    """Label series per engine metric (vLLM ``engine="i"``, SGLang ``dp_rank="i"``)."""
    malformed: bool | None = None
    """Break the waiting-queue line so a parser must reject the payload."""
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    """HTTP status of /metrics; anything but 200 comes with a short error body."""
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY_S)] | None = None
    """Seconds to wait before answering /metrics."""
    missing: bool | None = None
    """Serve process metrics only, without the engine's."""
    auto: bool | None = None
    """True: load follows the wave again; false: the set values hold."""


@dataclass
class Knobs:
    """The current settings of one double."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    kv_name: KvName = "new"
    series: int = 1
    malformed: bool = False
    status: int = 200
    delay_s: float = 0.0
    missing: bool = False
    auto: bool = True
    """Only matters with a wave: explicitly set load values win until auto is set again."""


@dataclass(frozen=True)
class Wave:
    """Demo load: waiting queue, running and KV usage follow one slow sine wave."""

    period_s: float = 60.0
    phase: float = 0.0
    """Offset as a fraction of the period, so several doubles peak at different times."""
    max_waiting: float = 16.0
    max_running: float = 8.0

    def at(self, now: float) -> tuple[float, float, float]:
        """(waiting, running, kv_usage) at unix time ``now``."""
        x = 0.5 + 0.5 * math.sin(2 * math.pi * (now / self.period_s + self.phase))
        return (float(round(self.max_waiting * x)),
                float(round(self.max_running * min(1.0, 0.25 + x))),
                round(0.05 + 0.9 * x, 4))


@dataclass
class _EngineSim:
    """Counters and histograms of one engine series, advanced from its load."""

    created: float
    carry: float = 0.0
    finished: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def advance(self, seconds: float, waiting: float, running: float, kv_usage: float) -> None:
        done = self.carry + running * seconds * 0.5
        count = int(done)
        self.carry = done - count
        if not count:
            return
        queue_s = 0.05 * waiting
        ttft_s = 0.02 + queue_s
        self.queue.observe(queue_s, count)
        self.ttft.observe(ttft_s, count)
        self.e2e.observe(ttft_s + 2.0, count)
        self.finished += count
        self.prompt_tokens += 200 * count
        self.generation_tokens += 100 * count
        self.prefix_queries += 200 * count
        self.prefix_hits += 80 * count
        if kv_usage > 0.95:
            self.preemptions += count


class MetricsDouble:
    """One engine's metrics endpoint as an ASGI app; figures change at run time."""

    def __init__(self, *, engine: Engine = "vllm", model: str = "demo", wave: Wave | None = None,
                 bearer: str | None = None, basic: tuple[str, str] | None = None,
                 metrics_path: str = "/metrics", clock: Callable[[], float] = time.time,
                 **knobs: Any) -> None:
        if engine not in ("vllm", "sglang"):
            raise ValueError(f"engine must be vllm or sglang, got {engine!r}")
        self.engine: Engine = engine
        self.model = model
        self.wave = wave
        self.metrics_path = metrics_path
        self.knobs = Knobs()
        self.scrapes = 0
        """Requests to the metrics path so far (answered or not)."""
        self._clock = clock
        self._started = clock()
        self._bearer = f"Bearer {bearer}".encode() if bearer is not None else None
        self._basic = (b"Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode())
                       if basic is not None else None)
        self._sims: list[_EngineSim] = []
        self._advanced_at = self._started
        if knobs:
            self.set(**knobs)

    def set(self, **changes: Any) -> None:
        """Change knobs like ``PUT /_control`` (same names and checks; ValueError if bad)."""
        try:
            control = msgspec.convert(changes, Control)
        except msgspec.ValidationError as err:
            raise ValueError(str(err)) from None
        self.apply(control)

    def apply(self, control: Control) -> None:
        """Apply a validated control; setting a load value turns ``auto`` off."""
        for name in control.__struct_fields__:
            value = getattr(control, name)
            if value is not None:
                setattr(self.knobs, name, value)
        load_set = any(v is not None for v in (control.waiting, control.running, control.kv_usage))
        if load_set and control.auto is None:
            self.knobs.auto = False

    def load(self) -> tuple[float, float, float]:
        """(waiting, running, kv_usage) being served now."""
        if self.wave is not None and self.knobs.auto:
            return self.wave.at(self._clock())
        return self.knobs.waiting, self.knobs.running, self.knobs.kv_usage

    def state(self) -> dict[str, Any]:
        """Knobs, the load being served, and the scrape count (what GET /_control returns)."""
        waiting, running, kv_usage = self.load()
        return {**msgspec.structs.asdict(_as_control(self.knobs)), "engine": self.engine,
                "model": self.model, "wave": self.wave is not None, "scrapes": self.scrapes,
                "serving": {"waiting": waiting, "running": running, "kv_usage": kv_usage}}

    def render(self) -> str:
        """The /metrics text for the current knobs."""
        now = self._clock()
        waiting, running, kv_usage = self.load()
        parts = self.knobs.series
        shares = list(zip(_split(waiting, parts), _split(running, parts),
                          [kv_usage * (parts - i) / parts for i in range(parts)], strict=True))
        if len(self._sims) != parts:
            self._sims = [_EngineSim(created=now) for _ in range(parts)]
        elapsed = min(60.0, max(0.0, now - self._advanced_at))
        self._advanced_at = now
        for sim, (w, r, kv) in zip(self._sims, shares, strict=True):
            sim.advance(elapsed, w, r, kv)
        out = Exposition()
        self._process_metrics(out)
        if not self.knobs.missing:
            if self.engine == "vllm":
                self._vllm_metrics(out, shares)
            else:
                self._sglang_metrics(out, shares)
        text = out.text()
        if self.knobs.malformed:
            text = _break_line(text, self._waiting_name())
        return text

    def _waiting_name(self) -> str:
        return "vllm:num_requests_waiting" if self.engine == "vllm" else "sglang:num_queue_reqs"

    def _labels(self, index: int) -> dict[str, str]:
        if self.engine == "vllm":
            return {"engine": str(index), "model_name": self.model}
        labels = {"engine_type": "unified", "model_name": self.model, "pp_rank": "0",
                  "tp_rank": str(index)}
        if self.knobs.series > 1:
            labels["dp_rank"] = str(index)
        return labels

    def _process_metrics(self, out: Exposition) -> None:
        out.gauge("python_info", "Python platform information",
                  [({"implementation": "CPython", "major": "3", "minor": "11",
                     "patchlevel": "7", "version": "3.11.7"}, 1.0)])
        out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                  [({}, 7.11770112e08)])
        out.gauge("process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.",
                  [({}, round(self._started, 2))])
        out.counter_plain("process_cpu_seconds_total",
                          "Total user and system CPU time spent in seconds.",
                          [({}, round(time.process_time(), 2))])

    def _vllm_metrics(self, out: Exposition, shares: list[tuple[float, float, float]]) -> None:
        rows = list(enumerate(shares))
        lbl = self._labels
        out.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                  [(lbl(i), r) for i, (_, r, _) in rows])
        out.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                  [(lbl(i), w) for i, (w, _, _) in rows])
        out.gauge("vllm:num_requests_waiting_by_reason",
                  "Number of waiting requests by reason. Reason labels: 'capacity' = waiting "
                  "for scheduling capacity; 'deferred' = deferred by transient constraints "
                  "(LoRA budget, KV transfer, blocked status). Sum of all reasons equals "
                  "vllm:num_requests_waiting.",
                  [row for i, (w, _, _) in rows
                   for row in (({**lbl(i), "reason": "capacity"}, w),
                               ({**lbl(i), "reason": "deferred"}, 0.0))])
        out.gauge("vllm:engine_sleep_state",
                  "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means "
                  "engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 "
                  "means sleep level 2.",
                  [({**lbl(i), "sleep_state": state}, 1.0 if state == "awake" else 0.0)
                   for i, _ in rows for state in ("awake", "weights_offloaded", "discard_all")])
        if self.knobs.kv_name in ("new", "both"):
            out.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                      [(lbl(i), kv) for i, (_, _, kv) in rows])
        if self.knobs.kv_name in ("old", "both"):
            out.gauge("vllm:gpu_cache_usage_perc",
                      "GPU KV-cache usage. 1 means 100 percent usage.",
                      [(lbl(i), kv) for i, (_, _, kv) in rows])
        sims = list(enumerate(self._sims))
        created = self._sims[0].created
        for base, help_text, attr in (
            ("vllm:prefix_cache_queries",
             "Prefix cache queries, in terms of number of queried tokens.", "prefix_queries"),
            ("vllm:prefix_cache_hits",
             "Prefix cache hits, in terms of number of cached tokens.", "prefix_hits"),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
             "preemptions"),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens"),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             "generation_tokens"),
        ):
            out.counter(base, help_text,
                        [(lbl(i), getattr(sim, attr), created) for i, sim in sims])
        out.counter("vllm:request_success", "Count of successfully processed requests.",
                    [({**lbl(i), "finished_reason": reason},
                      sim.finished if reason == "length" else 0.0, created)
                     for i, sim in sims for reason in FINISHED_REASONS])
        out.histogram("vllm:time_to_first_token_seconds",
                      "Histogram of time to first token in seconds.",
                      [(lbl(i), sim.ttft, created) for i, sim in sims])
        out.histogram("vllm:e2e_request_latency_seconds",
                      "Histogram of e2e request latency in seconds.",
                      [(lbl(i), sim.e2e, created) for i, sim in sims])
        out.histogram("vllm:request_queue_time_seconds",
                      "Histogram of time spent in WAITING phase for request.",
                      [(lbl(i), sim.queue, created) for i, sim in sims])
        out.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                  [({**lbl(i), "block_size": "16", "cache_dtype": "auto",
                     "enable_prefix_caching": "True", "gpu_memory_utilization": "0.9",
                     "num_gpu_blocks": "8192"}, 1.0) for i, _ in rows])

    def _sglang_metrics(self, out: Exposition, shares: list[tuple[float, float, float]]) -> None:
        rows = list(enumerate(shares))
        lbl = self._labels
        out.gauge("sglang:num_running_reqs", "The number of running requests.",
                  [(lbl(i), r) for i, (_, r, _) in rows])
        out.gauge("sglang:num_used_tokens", "The number of used tokens.",
                  [(lbl(i), round(kv * 262144)) for i, (_, _, kv) in rows])
        out.gauge("sglang:token_usage", "The token usage.",
                  [(lbl(i), kv) for i, (_, _, kv) in rows])
        out.gauge("sglang:gen_throughput", "The generation throughput (token/s).",
                  [(lbl(i), 50.0 * r) for i, (_, r, _) in rows])
        out.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
                  [(lbl(i), w) for i, (w, _, _) in rows])
        out.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
                  [(lbl(i), 0.4) for i, _ in rows])
        out.gauge("sglang:max_total_num_tokens",
                  "Maximum total number of tokens in the KV cache pool.",
                  [(lbl(i), 262144.0) for i, _ in rows])
        sims = list(enumerate(self._sims))
        created = self._sims[0].created
        out.counter("sglang:prompt_tokens", "Number of prefill tokens processed.",
                    [(lbl(i), sim.prompt_tokens, created) for i, sim in sims])
        out.counter("sglang:generation_tokens", "Number of generation tokens processed.",
                    [(lbl(i), sim.generation_tokens, created) for i, sim in sims])
        out.counter("sglang:num_requests", "The number of processed requests.",
                    [(lbl(i), sim.finished, created) for i, sim in sims])
        out.histogram("sglang:time_to_first_token_seconds",
                      "Histogram of time to first token in seconds.",
                      [(lbl(i), sim.ttft, created) for i, sim in sims])
        out.histogram("sglang:e2e_request_latency_seconds",
                      "Histogram of End-to-end request latency in seconds",
                      [(lbl(i), sim.e2e, created) for i, sim in sims])
        out.histogram("sglang:queue_time_seconds",
                      "Histogram of queueing time in seconds.",
                      [(lbl(i), sim.queue, created) for i, sim in sims])

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._bearer is None and self._basic is None:
            return True
        given = next((value for name, value in headers if name == b"authorization"), b"")
        return any(expected is not None and hmac.compare_digest(given, expected)
                   for expected in (self._bearer, self._basic))

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path, method = scope["path"], scope["method"]
        if path == self.metrics_path and method in ("GET", "HEAD"):
            await self._serve_metrics(scope, receive, send)
        elif path == "/_control" and method == "PUT":
            await self._control(body, send)
        elif path == "/_control" and method == "GET":
            await _respond(send, 200, msgspec.json.encode(self.state()), b"application/json")
        elif path == "/health" and method == "GET":
            await _respond(send, 200, b"", b"application/json")
        else:
            await _respond(send, 404, b'{"detail":"Not Found"}', b"application/json")

    async def _serve_metrics(self, scope: Message, receive: Receive, send: Send) -> None:
        self.scrapes += 1
        if not self._authorized(scope["headers"]):
            await _respond(send, 401, b'{"error":"Unauthorized"}', b"application/json",
                           [(b"www-authenticate", b'Bearer, Basic realm="metrics"')])
            return
        if self.knobs.delay_s > 0 and await _disconnected_within(receive, self.knobs.delay_s):
            return
        if self.knobs.status != 200:
            await _respond(send, self.knobs.status, b"simulated failure\n", b"text/plain")
            return
        await _respond(send, 200, self.render().encode(), CONTENT_TYPE)

    async def _control(self, body: bytes, send: Send) -> None:
        try:
            control = msgspec.json.decode(body or b"{}", type=Control)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            await _respond(send, 400, msgspec.json.encode({"error": str(err)}),
                           b"application/json")
            return
        self.apply(control)
        await _respond(send, 200, msgspec.json.encode(self.state()), b"application/json")


def _as_control(knobs: Knobs) -> Control:
    return Control(**{name: getattr(knobs, name) for name in Control.__struct_fields__})


def _split(total: float, parts: int) -> list[float]:
    """``total`` over ``parts`` series, whole numbers when it is one (the sum is exact)."""
    if total == int(total):
        base, rest = divmod(int(total), parts)
        return [float(base + (1 if i < rest else 0)) for i in range(parts)]
    return [total / parts] * parts


def _break_line(text: str, name: str) -> str:
    """Drop the closing brace of ``name``'s first sample line."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.startswith(name + "{"):
            lines[index] = line.replace("} ", " ", 1)
            break
    return "\n".join(lines)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True if the client went away meanwhile (then do not answer)."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def _respond(send: Send, status: int, body: bytes, content_type: bytes,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def start_double(double: MetricsDouble, host: str = "127.0.0.1", port: int = 0,
                       **uvicorn_options: Any) -> RunningServer:
    """Serve ``double`` on a real socket in this loop (port 0: a free one).

    ``uvicorn_options`` go to uvicorn.Config, e.g. ``ssl_certfile``/``ssl_keyfile`` for https.
    """
    uvicorn_options.setdefault("timeout_graceful_shutdown", 1)
    server = await start_app(double, host, port, **uvicorn_options)
    # uvicorn writes headers and body separately; without TCP_NODELAY (accepted sockets
    # inherit it from the listener) Nagle + delayed ACK stall each keep-alive reply ~40 ms
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


@contextlib.asynccontextmanager
async def serve_doubles(doubles: Sequence[MetricsDouble], *, host: str = "127.0.0.1",
                        ports: Sequence[int] | None = None) -> AsyncIterator[list[RunningServer]]:
    """Serve each double on its own port; all stop on exit."""
    servers: list[RunningServer] = []
    try:
        for double, port in zip(doubles, ports or [0] * len(doubles), strict=True):
            servers.append(await start_double(double, host, port))
        yield servers
    finally:
        for server in servers:
            await server.stop()


def demo_doubles(count: int, *, engine: Engine = "vllm", model: str = "demo",
                 period_s: float = 60.0, **options: Any) -> list[MetricsDouble]:
    """``count`` doubles whose load follows the same wave at evenly spread phases."""
    return [MetricsDouble(engine=engine, model=model,
                          wave=Wave(period_s=period_s, phase=index / count), **options)
            for index in range(count)]


def _ports(text: str) -> list[int]:
    try:
        ports = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ports must be numbers: {text!r}") from None
    if not ports or any(not 0 <= port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"ports must be 0..65535 (0 = any free): {text!r}")
    return ports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.doubles.metrics_server",
        description="Serve stand-in vLLM/SGLang /metrics endpoints (PUT /_control to steer).")
    parser.add_argument("--ports", type=_ports, required=True,
                        help="comma-separated ports, one instance each (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--engine", choices=("vllm", "sglang"), default="vllm")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--wave", action="store_true",
                        help="load follows a slow wave, each instance at another phase")
    parser.add_argument("--period", type=float, default=60.0, help="wave period, seconds")
    parser.add_argument("--series", type=int, default=1, help="label series per metric")
    parser.add_argument("--bearer-env", help="require this env variable's value as bearer token")
    parser.add_argument("--basic-user", help="require basic auth with this user ...")
    parser.add_argument("--basic-password-env", help="... and this env variable's password")
    return parser


async def _serve_until_signalled(doubles: list[MetricsDouble], host: str, ports: list[int]
                                 ) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve_doubles(doubles, host=host, ports=ports) as servers:
        for double, server in zip(doubles, servers, strict=True):
            print(f"{double.engine} metrics on {server.url}{double.metrics_path} "
                  f"model={double.model} control={server.url}/_control", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the doubles until SIGINT/SIGTERM; prints one line per listening instance."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.basic_user) != bool(args.basic_password_env):
        parser.error("--basic-user and --basic-password-env go together")
    setup_logging("metrics-double")
    options: dict[str, Any] = {"series": args.series}
    if args.bearer_env:
        options["bearer"] = os.environ.get(args.bearer_env, "")
    if args.basic_user:
        options["basic"] = (args.basic_user, os.environ.get(args.basic_password_env, ""))
    try:
        if args.wave:
            doubles = demo_doubles(len(args.ports), engine=args.engine, model=args.model,
                                   period_s=args.period, **options)
        else:
            doubles = [MetricsDouble(engine=args.engine, model=args.model, **options)
                       for _ in args.ports]
        asyncio.run(_serve_until_signalled(doubles, args.host, args.ports))
    except (OSError, ValueError) as err:
        print(f"metrics_server: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
