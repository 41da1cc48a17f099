"""Soak benchmark: the whole system under steady mixed traffic, its memory and FDs sampled.

Every part runs as its own process on loopback: embedded NATS and Valkey, the API, two
scheduler replicas, the collector, the autoscaler, a worker (an alias registered through the
admin API, served by simulated engines inside the worker) and a static pool of three
simulated engines (``llmsched engine-sim``). Open-loop traffic at fixed rates, with a cap on
requests in flight, runs for ``--duration`` seconds:

- selects on the F5 path (``POST /scheduler/select`` for the static pool);
- OpenAI gateway requests (``POST /v1/chat/completions``, some streamed), alternating
  between the worker's alias and the static pool's model;
- a Prometheus-like scrape of every service's ``/metrics`` every ``--scrape-s`` seconds.

Every ``--sample-s`` seconds the RSS and open file descriptors of every process are read
from ``/proc``. The report gives, per process, RSS and FDs at the end of the warm-up and at
the end, and their growth per hour (least-squares slope over the samples after the
warm-up); request counts and every failure. Results go to ``bench/results/soak-<time>``
(``.json``, ``.md``, ``.png`` when matplotlib is installed). See ``bench/README.md``.

Run ``.venv/bin/python bench/soak.py [--duration 600 --warmup 60]``;
``--plot RESULT.json`` redraws the plot of an earlier run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import yaml
from loadgen import run_fast  # bench/ is sys.path[0] when run as a script
from select_bench import BenchError, Child, proc_cpu_s

from shared.auth import ADMIN_KEY_ENV
from shared.http_server import free_port

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
REPO = HERE.parent
RESULTS = HERE / "results"

PARTITION = "Common"
SELECT_POOL = "soak-select"
STATIC_MODEL = "soak-static"
ALIAS = "soak-chat"
ENGINE_SPEEDS = (1.0, 2.0, 0.5)
NOT_SELECTED = ("none", "fallback")
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence, please."}]
SCALING = {"min_replicas": 1, "max_replicas": 2, "scale_interval_s": 5, "down_after_s": 30,
           "drain_timeout_s": 10}
SELECT_TIMEOUT_S = 5.0
GATEWAY_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
MAX_FAILURE_SAMPLES = 50

Request = Coroutine[Any, Any, None]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM before the traffic started."""


@dataclass(frozen=True)
class Options:
    """What the command line decides."""

    duration_s: float
    warmup_s: float
    sample_s: float
    scrape_s: float
    select_rate: float
    gateway_rate: float
    stream_share: float
    max_tokens: int
    max_inflight: int
    keep_logs: bool
    seed: int


# --------------------------------------------------------------------------- the stack


def config_doc(prefix: str, api_port: int, engine_ports: list[int], metrics: dict[str, int]
               ) -> dict[str, Any]:
    """One static pool of the engine-sim engines (also served as a gateway model)."""
    members = [f"127.0.0.1:{port}" for port in engine_ports]
    return {
        "global": {"interval": 10, "api_host": "127.0.0.1", "api_port": api_port,
                   "log_level": "WARNING", "prefix": prefix},
        "metrics": {"host": "127.0.0.1", **{f"{role}_port": port
                                            for role, port in metrics.items()}},
        "scheduler": {"pool_fetch_interval": 10, "metrics_fetch_interval": 1000},
        "modes": [{"name": "s1", "w_a": 0.8, "w_b": 0.2}],
        "pools": [{"name": SELECT_POOL, "partition": PARTITION, "engine_type": "vllm",
                   "source": "static", "model": STATIC_MODEL, "members": members,
                   "metrics": {"schema": "http", "path": "/metrics", "timeout": 2}}],
    }


@dataclass
class Stack:
    """The running processes and where they answer."""

    workdir: Path
    api: str
    worker: str
    select_body: bytes
    metrics_urls: dict[str, str]
    """Process name → its /metrics URL (what a Prometheus would scrape)."""
    children: dict[str, Child] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Every sampled process: the children, nats and valkey."""
    servers: dict[str, Any] = field(default_factory=dict)

    def dead(self) -> list[str]:
        """Processes that are gone, with why."""
        out = [f"{name} exited with code {child.proc.returncode}: {child.log_tail(800)}"
               for name, child in self.children.items() if child.proc.poll() is not None]
        out += [f"{name} exited: {server.log_tail(800)}"
                for name, server in self.servers.items() if not server.running]
        return out


@contextlib.contextmanager
def running_stack(opts: Options) -> Iterator[Stack]:
    """Start every process; stop them all on exit (Ctrl-C included)."""
    from shared.embedded import nats_server, valkey_server

    workdir = Path(tempfile.mkdtemp(prefix="llmsched-soak-"))
    failed = False
    try:
        with contextlib.ExitStack() as cleanup:
            nats = nats_server(workdir=str(workdir)).start()
            cleanup.callback(nats.stop)
            valkey = valkey_server(workdir=str(workdir)).start()
            cleanup.callback(valkey.stop)
            assert nats.proc is not None and valkey.proc is not None
            api_port, worker_port = free_port(), free_port()
            engine_ports = [free_port() for _ in ENGINE_SPEEDS]
            listeners = {"scheduler-1": free_port(), "scheduler-2": free_port(),
                         "collector": free_port(), "autoscaler": free_port()}
            prefix = f"soak_{os.getpid()}_{secrets.token_hex(3)}"
            configs: dict[str, Path] = {}
            for name in ("scheduler-1", "scheduler-2"):  # one listener port per replica
                path = workdir / f"config-{name}.yaml"
                path.write_text(yaml.safe_dump(config_doc(
                    prefix, api_port, engine_ports,
                    {"scheduler": listeners[name], "collector": listeners["collector"],
                     "autoscaler": listeners["autoscaler"]}), sort_keys=False))
                configs[name] = path
            shared_config = configs["scheduler-1"]
            env = {k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV}
            env.update(NATS_URL=nats.url, REDIS_URL=valkey.url, PYTHONUNBUFFERED="1")
            api, worker = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
            members = [f"127.0.0.1:{port}" for port in engine_ports]
            stack = Stack(
                workdir=workdir, api=api, worker=worker,
                select_body=json.dumps({"pool_name": SELECT_POOL, "partition": PARTITION,
                                        "members": members}).encode(),
                metrics_urls={"api": f"{api}/metrics", "worker": f"{worker}/metrics",
                              **{name: f"http://127.0.0.1:{port}/metrics"
                                 for name, port in listeners.items()}},
                servers={"nats": nats, "valkey": valkey},
                pids={"nats": nats.proc.pid, "valkey": valkey.proc.pid})
            service = [sys.executable, "-m", "services"]
            argvs = [
                ("engines", [*service, "engine-sim", "--port", ",".join(map(str, engine_ports)),
                             "--speed", ",".join(map(str, ENGINE_SPEEDS)),
                             "--model", STATIC_MODEL, "--max-num-seqs", "64",
                             "--seed", str(opts.seed), "--log-level", "WARNING"]),
                *((name, [*service, "scheduler", "--config", str(path)])
                  for name, path in configs.items()),
                ("collector", [*service, "collector", "--config", str(shared_config)]),
                ("autoscaler", [*service, "autoscaler", "--config", str(shared_config)]),
                ("api", [*service, "api", "--config", str(shared_config)]),
                ("worker", [*service, "worker", "--port", str(worker_port), "--manager-url",
                            api, "--worker-id", "soak-worker", "--heartbeat-interval", "2",
                            "--log-dir", str(workdir / "engines"), "--log-level", "WARNING"]),
            ]
            for name, argv in argvs:
                child = Child(name, argv, workdir, env)
                cleanup.callback(child.stop)
                stack.children[name] = child
                stack.pids[name] = child.proc.pid
            yield stack
    except BaseException:
        failed = True
        raise
    finally:
        if failed or opts.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _poll(what: str, stack: Stack, stop: asyncio.Event,
                check: Callable[[], Awaitable[tuple[bool, str]]], in_a_row: int = 1) -> None:
    """Until ``check`` succeeds ``in_a_row`` times in a row (every scheduler replica of the
    queue group answers, not only the first one ready)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    streak = 0
    while time.monotonic() < deadline:
        if stop.is_set():
            raise Interrupted
        if dead := stack.dead():
            raise BenchError("; ".join(dead))
        try:
            ok, last = await check()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            ok, last = False, f"{type(err).__name__}: {err}"
        streak = streak + 1 if ok else 0
        if streak >= in_a_row:
            return
        if not ok:
            await asyncio.sleep(0.5)
    raise BenchError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s ({last})")


def chat_body(model: str, stream: bool, max_tokens: int) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


async def wait_ready(stack: Stack, http: aiohttp.ClientSession, stop: asyncio.Event,
                     max_tokens: int) -> None:
    """API and worker up, the alias registered, selects and both gateway models answering."""

    async def get_ok(url: str) -> tuple[bool, str]:
        async with http.get(url) as resp:
            return resp.status == 200, f"HTTP {resp.status}"

    await _poll("API /health", stack, stop, lambda: get_ok(f"{stack.api}/health"))
    await _poll("worker /health", stack, stop, lambda: get_ok(f"{stack.worker}/health"))
    registration = {"alias": ALIAS, "model_name": "llama-3.1-8b-sim", "engine": "vllm",
                    "max_num_seqs": 32, "speed": 2.0, "autoscaling": SCALING}
    async with http.post(f"{stack.api}/admin/models/register", json=registration) as resp:
        if resp.status not in (200, 201):
            raise BenchError(f"registering {ALIAS}: HTTP {resp.status} {await resp.text()}")

    async def selects() -> tuple[bool, str]:
        async with http.post(f"{stack.api}/scheduler/select", data=stack.select_body,
                             headers={"content-type": "application/json"}) as resp:
            text = await resp.text()
            return resp.status == 200 and text not in NOT_SELECTED, f"{resp.status} {text}"

    await _poll("select on the static pool", stack, stop, selects, in_a_row=40)
    for model in (STATIC_MODEL, ALIAS):
        body = chat_body(model, False, max_tokens)

        async def chats(body: bytes = body) -> tuple[bool, str]:
            async with http.post(f"{stack.api}/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"}) as resp:
                text = await resp.text()
                return resp.status == 200, f"{resp.status} {text[:200]}"

        await _poll(f"gateway model {model}", stack, stop, chats, in_a_row=10)
    await _poll("every /metrics", stack, stop, lambda: _all_metrics(http, stack))


async def _all_metrics(http: aiohttp.ClientSession, stack: Stack) -> tuple[bool, str]:
    for name, url in stack.metrics_urls.items():
        async with http.get(url) as resp:
            if resp.status != 200:
                return False, f"{name} {url}: HTTP {resp.status}"
    return True, ""


# --------------------------------------------------------------------------- traffic


@dataclass
class Tally:
    """Counts and latencies of one kind of request."""

    kind: str
    rate: float
    sent: int = 0
    ok: int = 0
    failed: int = 0
    dropped: int = 0
    """Not sent: ``max_inflight`` requests of this kind were already waiting."""
    latencies_ms: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    first_at: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, t: float, reason: str, dropped: bool = False) -> None:
        if dropped:
            self.dropped += 1
        else:
            self.failed += 1
        key = reason[:160]
        self.reasons[key] += 1
        self.first_at.setdefault(key, round(t, 1))
        if len(self.samples) < MAX_FAILURE_SAMPLES:
            self.samples.append({"t_s": round(t, 2), "reason": reason[:400]})

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q / 100 * len(lat)))], 2) if lat else 0.0

        return {"kind": self.kind, "rate_per_s": self.rate, "sent": self.sent, "ok": self.ok,
                "failed": self.failed, "dropped": self.dropped, "p50_ms": pct(50),
                "p99_ms": pct(99), "max_ms": round(lat[-1], 2) if lat else 0.0,
                "failure_reasons": [{"reason": r, "count": n, "first_at_s": self.first_at[r]}
                                    for r, n in self.reasons.most_common()],
                "failure_samples": self.samples}


class Clock:
    """Seconds since traffic started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


async def open_loop(rate: float, until_s: float, cap: int, clock: Clock, tally: Tally,
                    stop: asyncio.Event, fire: Callable[[int], Request]) -> None:
    """Start request ``i`` at ``i / rate`` s whatever earlier ones are doing (open loop);
    while ``cap`` of them are unfinished a due request is dropped and counted."""
    if rate <= 0:
        return
    running: set[asyncio.Task[None]] = set()
    i = 0
    while not stop.is_set():
        due = i / rate
        if due >= until_s:
            break
        wait = due - clock.now()
        if wait > 0:
            await asyncio.sleep(min(wait, 0.25))
            continue
        i += 1
        if len(running) >= cap:
            tally.fail(clock.now(), f"dropped: {cap} {tally.kind} requests still in flight",
                       dropped=True)
            continue
        tally.sent += 1
        task = asyncio.create_task(fire(i))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running, return_exceptions=True)


async def select_once(http: aiohttp.ClientSession, url: str, body: bytes, clock: Clock,
                      tally: Tally) -> None:
    start = time.perf_counter()
    try:
        async with http.post(url, data=body, headers={"content-type": "application/json"},
                             timeout=aiohttp.ClientTimeout(total=SELECT_TIMEOUT_S)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        tally.fail(clock.now(), f"select: {type(err).__name__}: {err}")
        return
    if resp.status != 200:
        tally.fail(clock.now(), f"select: HTTP {resp.status}: {text[:200]}")
    elif text in NOT_SELECTED or ":" not in text:
        tally.fail(clock.now(), f"select: answer {text[:100]!r}")
    else:
        tally.ok += 1
        tally.latencies_ms.append((time.perf_counter() - start) * 1000)


async def chat_once(http: aiohttp.ClientSession, url: str, body: bytes, stream: bool,
                    label: str, clock: Clock, tally: Tally) -> None:
    start = time.perf_counter()
    problem = ""
    try:
        async with http.post(url, data=body, headers={"content-type": "application/json"},
                             timeout=aiohttp.ClientTimeout(total=GATEWAY_TIMEOUT_S)) as resp:
            raw = await resp.read()
        if resp.status != 200:
            problem = f"HTTP {resp.status}: {raw[:200]!r}"
        elif stream and not raw.rstrip().endswith(b"data: [DONE]"):
            problem = f"stream without [DONE]: ...{raw[-200:]!r}"
        elif not stream and b'"choices"' not in raw:
            problem = f"answer without choices: {raw[:200]!r}"
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem:
        tally.fail(clock.now(), f"gateway {label}: {problem}")
    else:
        tally.ok += 1
        tally.latencies_ms.append((time.perf_counter() - start) * 1000)


async def scrape_loop(http: aiohttp.ClientSession, urls: dict[str, str], every_s: float,
                      until_s: float, clock: Clock, tally: Tally, stop: asyncio.Event) -> None:
    """GET every service's /metrics every ``every_s`` seconds, as Prometheus would."""
    while not stop.is_set() and clock.now() < until_s:
        for name, url in urls.items():
            tally.sent += 1
            start = time.perf_counter()
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    raw = await resp.read()
                if resp.status == 200 and b"llmsched_" in raw:
                    tally.ok += 1
                    tally.latencies_ms.append((time.perf_counter() - start) * 1000)
                else:
                    tally.fail(clock.now(), f"/metrics of {name}: HTTP {resp.status} "
                               f"{raw[:120]!r}")
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                tally.fail(clock.now(), f"/metrics of {name}: {type(err).__name__}: {err}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(every_s, max(until_s - clock.now(), 0.0)))


# --------------------------------------------------------------------------- sampling


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (``VmRSS``), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    """Open file descriptors of a process, None when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Samples:
    """Per process: (t s, RSS KiB, open FDs, CPU s) every sample."""

    pids: dict[str, int]
    rows: dict[str, list[tuple[float, int, int, float]]] = field(default_factory=dict)

    def take(self, t: float) -> None:
        for name, pid in self.pids.items():
            rss, fds, cpu = rss_kib(pid), open_fds(pid), proc_cpu_s(pid)
            if rss is not None and fds is not None:
                self.rows.setdefault(name, []).append((round(t, 2), rss, fds,
                                                       round(cpu or 0.0, 2)))


async def sample_loop(samples: Samples, stack: Stack, every_s: float, until_s: float,
                      clock: Clock, stop: asyncio.Event, findings: list[str]) -> None:
    """Sample until the end; a process that dies is a finding and stops the run."""
    while True:
        samples.take(clock.now())
        if dead := stack.dead():
            findings.extend(f"at {clock.now():.0f} s: {d}" for d in dead)
            stop.set()
            return
        if stop.is_set() or clock.now() >= until_s:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(every_s, max(until_s - clock.now(), 0.0)))


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t s, value) points, per hour; None with fewer than 2 times."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den * 3600


def process_summary(samples: Samples, warmup_s: float) -> dict[str, dict[str, Any]]:
    """RSS and FDs after the warm-up and at the end, growth per hour, CPU use."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in samples.rows.items():
        kept = [r for r in rows if r[0] >= warmup_s] or rows[-1:]
        first, last = kept[0], kept[-1]
        rss_slope = slope_per_hour([(t, rss / 1024) for t, rss, _, _ in kept])
        fd_slope = slope_per_hour([(t, float(fds)) for t, _, fds, _ in kept])
        span = last[0] - first[0]
        out[name] = {
            "pid": samples.pids[name], "samples": len(kept),
            "from_s": first[0], "to_s": last[0],
            "rss_start_mib": round(first[1] / 1024, 1), "rss_end_mib": round(last[1] / 1024, 1),
            "rss_max_mib": round(max(r[1] for r in kept) / 1024, 1),
            "rss_growth_mib_per_h": None if rss_slope is None else round(rss_slope, 1),
            "fds_start": first[2], "fds_end": last[2], "fds_max": max(r[2] for r in kept),
            "fds_growth_per_h": None if fd_slope is None else round(fd_slope, 1),
            "cpu_cores": round((last[3] - first[3]) / span, 3) if span > 0 else None,
        }
    return out


# --------------------------------------------------------------------------- the run


async def soak(stack: Stack, opts: Options) -> dict[str, Any]:
    """Wait for the stack, run the traffic and the sampler, return everything measured."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupted: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        interrupted.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    connector = aiohttp.TCPConnector(limit=opts.max_inflight * 3, keepalive_timeout=10)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=15)) as http:
        print("Waiting for the stack (API, worker, alias, selects, gateway, /metrics)...",
              flush=True)
        ready_from = time.monotonic()
        await wait_ready(stack, http, stop, opts.max_tokens)
        ready_s = time.monotonic() - ready_from
        print(f"Ready after {ready_s:.0f} s. Traffic for {opts.duration_s:.0f} s "
              f"(warm-up {opts.warmup_s:.0f} s): "
              f"{opts.select_rate:g} selects/s, {opts.gateway_rate:g} gateway requests/s "
              f"({opts.stream_share:.0%} streamed), /metrics every {opts.scrape_s:g} s, "
              f"samples every {opts.sample_s:g} s.", flush=True)
        clock = Clock()
        selects = Tally("select", opts.select_rate)
        gateway = Tally("gateway", opts.gateway_rate)
        scrapes = Tally("metrics scrape", round(len(stack.metrics_urls) / opts.scrape_s, 3))
        samples = Samples(stack.pids)
        findings: list[str] = []
        rng = random.Random(opts.seed)
        models = (ALIAS, STATIC_MODEL)
        bodies = {(m, s): chat_body(m, s, opts.max_tokens) for m in models for s in (False, True)}
        select_url = f"{stack.api}/scheduler/select"
        chat_url = f"{stack.api}/v1/chat/completions"

        def fire_select(_i: int) -> Request:
            return select_once(http, select_url, stack.select_body, clock, selects)

        def fire_chat(i: int) -> Request:
            model, stream = models[i % 2], rng.random() < opts.stream_share
            label = f"{model}{' stream' if stream else ''}"
            return chat_once(http, chat_url, bodies[model, stream], stream, label, clock,
                             gateway)

        progress = asyncio.create_task(_progress(clock, opts, selects, gateway, stop))
        await asyncio.gather(
            open_loop(opts.select_rate, opts.duration_s, opts.max_inflight, clock, selects,
                      stop, fire_select),
            open_loop(opts.gateway_rate, opts.duration_s, opts.max_inflight, clock, gateway,
                      stop, fire_chat),
            scrape_loop(http, stack.metrics_urls, opts.scrape_s, opts.duration_s, clock,
                        scrapes, stop),
            sample_loop(samples, stack, opts.sample_s, opts.duration_s, clock, stop, findings))
        progress.cancel()
        elapsed = clock.now()
    if interrupted:
        findings.append(f"interrupted ({interrupted[0]}) at {elapsed:.0f} s")
    return {"elapsed_s": round(elapsed, 1), "ready_after_s": round(ready_s, 1),
            "traffic": [t.summary() for t in (selects, gateway, scrapes)],
            "processes": process_summary(samples, opts.warmup_s),
            "samples": {name: rows for name, rows in samples.rows.items()},
            "findings": findings}


async def _progress(clock: Clock, opts: Options, selects: Tally, gateway: Tally,
                    stop: asyncio.Event) -> None:
    every = max(30.0, opts.duration_s / 10)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        print(f"  {clock.now():5.0f} s: selects {selects.ok} ok / {selects.failed} failed, "
              f"gateway {gateway.ok} ok / {gateway.failed} failed", flush=True)


# --------------------------------------------------------------------------- report


def _cell(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if signed and isinstance(value, int | float):
        return f"{value:+,.1f}" if isinstance(value, float) else f"{value:+,d}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def markdown(meta: dict[str, Any], result: dict[str, Any]) -> str:
    """The report as Markdown (also what is printed)."""
    o = meta["options"]
    lines = [
        f"# llmsched soak — {meta['started']}",
        "",
        f"`{meta['command']}`: {result['elapsed_s']:.0f} s of traffic, the first "
        f"{o['warmup_s']:.0f} s a warm-up left out of the figures; {meta['cpus']} CPUs, "
        f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}.",
        "",
        "| process | RSS start MiB | RSS end MiB | RSS max MiB | RSS growth MiB/h "
        "| FDs start | FDs end | FD growth /h | CPU cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in result["processes"].items():
        lines.append(
            f"| {name} | {_cell(p['rss_start_mib'])} | {_cell(p['rss_end_mib'])} "
            f"| {_cell(p['rss_max_mib'])} | {_cell(p['rss_growth_mib_per_h'], True)} "
            f"| {_cell(p['fds_start'])} | {_cell(p['fds_end'])} "
            f"| {_cell(p['fds_growth_per_h'], True)} "
            f"| {'–' if p['cpu_cores'] is None else format(p['cpu_cores'], '.2f')} |")
    lines += ["", "Start = first sample after the warm-up, end = last sample; growth per hour "
              "is the least-squares slope over the samples after the warm-up.", "",
              "| traffic | rate/s | sent | ok | failed | dropped | p50 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in result["traffic"]:
        lines.append(f"| {t['kind']} | {t['rate_per_s']:g} | {t['sent']:,} | {t['ok']:,} "
                     f"| {t['failed']:,} | {t['dropped']:,} | {t['p50_ms']:.1f} "
                     f"| {t['p99_ms']:.1f} | {t['max_ms']:.1f} |")
    failures = [(t["kind"], r) for t in result["traffic"] for r in t["failure_reasons"]]
    lines += ["", "## Findings", ""]
    if not failures and not result["findings"]:
        lines.append("None: no failed or dropped request, no process lost.")
    lines += [f"- {f}" for f in result["findings"]]
    lines += [f"- {kind}: {r['count']} × {r['reason']} (first at {r['first_at_s']} s)"
              for kind, r in failures]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], warmup_s: float, title: str, out: Path) -> str:
    """RSS and FDs over time per process as a PNG; a note of what happened."""
    try:
        import matplotlib
    except ImportError:
        return ("plot skipped: matplotlib is not installed (a bench-only requirement: "
                ".venv/bin/python -m pip install matplotlib; then "
                f"bench/soak.py --plot {out.with_suffix('.json').name})")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for name, rows in result["samples"].items():
        minutes = [r[0] / 60 for r in rows]
        ax_rss.plot(minutes, [r[1] / 1024 for r in rows], label=name, linewidth=1.2)
        ax_fd.plot(minutes, [r[2] for r in rows], label=name, linewidth=1.2)
    for ax in (ax_rss, ax_fd):
        ax.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    ax_rss.set_ylabel("RSS (MiB)")
    ax_fd.set_ylabel("open file descriptors")
    ax_fd.yaxis.get_major_locator().set_params(integer=True)
    ax_fd.set_xlabel("minutes since traffic started (dashed: end of warm-up)")
    ax_rss.set_title(title)
    ax_rss.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"plot written to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}"


def replot(path: Path) -> int:
    doc = json.loads(path.read_text())
    note = plot(doc["result"], doc["meta"]["options"]["warmup_s"],
                f"llmsched soak {doc['meta']['started']}", path.with_suffix(".png"))
    print(note)
    return 0 if note.startswith("plot written") else 1


# --------------------------------------------------------------------------- main


def _raise_on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(opts: Options, command: str) -> int:
    started = datetime.now()
    meta = {"started": started.isoformat(timespec="seconds"), "command": command,
            "options": opts.__dict__, "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    with running_stack(opts) as stack:
        result = run_fast(soak(stack, opts))
    meta["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"soak-{started.strftime('%Y%m%d-%H%M%S')}"
    report = markdown(meta, result)
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
    base.with_suffix(".md").write_text(report)
    print()
    print(report)
    print(plot(result, opts.warmup_s, f"llmsched soak {meta['started']}",
               base.with_suffix(".png")))
    print(f"results written to {base.relative_to(REPO)}.json and .md")
    bad = result["findings"] or any(t["failed"] or t["dropped"] for t in result["traffic"])
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of traffic, warm-up included (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="first seconds left out of the figures (default 60)")
    parser.add_argument("--sample-s", type=float, default=10.0,
                        help="seconds between RSS/FD samples (default 10)")
    parser.add_argument("--scrape-s", type=float, default=15.0,
                        help="seconds between scrapes of every /metrics (default 15)")
    parser.add_argument("--select-rate", type=float, default=200.0,
                        help="selects per second (default 200)")
    parser.add_argument("--gateway-rate", type=float, default=20.0,
                        help="gateway requests per second (default 20)")
    parser.add_argument("--stream-share", type=float, default=0.5,
                        help="share of gateway requests streamed (default 0.5)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="max_tokens of each gateway request (default 16)")
    parser.add_argument("--max-inflight", type=int, default=64,
                        help="cap on unfinished requests of each kind (default 64)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--plot", type=Path, metavar="RESULT.json",
                        help="only redraw the PNG of an earlier run")
    args = parser.parse_args(argv)
    if args.plot is not None:
        return replot(args.plot)
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be at least 0 and below --duration")
    if args.sample_s <= 0 or args.scrape_s <= 0 or args.max_inflight < 1:
        parser.error("--sample-s and --scrape-s must be > 0, --max-inflight >= 1")
    opts = Options(duration_s=args.duration, warmup_s=args.warmup, sample_s=args.sample_s,
                   scrape_s=args.scrape_s, select_rate=args.select_rate,
                   gateway_rate=args.gateway_rate, stream_share=args.stream_share,
                   max_tokens=args.max_tokens, max_inflight=args.max_inflight,
                   keep_logs=args.keep_logs, seed=args.seed)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    command = " ".join(["bench/soak.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        return run(opts, command)
    except BenchError as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("soak: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
