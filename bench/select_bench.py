"""Select-path benchmark (DESIGN §6), everything in one run with one load tool.

1. HTTP ``POST /scheduler/select`` through one API process (→ NATS → one scheduler process)
   against a bare FastAPI endpoint returning a constant, served by uvicorn exactly as the API
   is served: p50 at one connection, throughput at many, and their ratio.
2. Direct NATS select against the one scheduler process, many requests in flight.
3. The in-process decision cost of ``SchedulerCore.select`` for 3, 100 and 1,000 members.

Run ``.venv/bin/python bench/select_bench.py [--quick]``; results are printed and written to
``bench/results/select-<timestamp>.json``. See ``bench/README.md``.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import yaml
from loadgen import request_once, run_fast  # bench/ is sys.path[0] when run as a script

from shared.http_server import free_port
from shared.messages import (
    MemberInfo,
    MemberMetrics,
    MetricsBatch,
    PoolSnapshot,
    SelectReply,
    SelectRequest,
)
from shared.routing import OutcomeEvent
from shared.subjects import Subjects

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
REPO = HERE.parent

PARTITION = "Common"
BARE_ANSWER = "10.0.0.1:8000"
NOT_SELECTED = ("none", "fallback")
METRICS_PERIOD_S = 0.5
SNAPSHOT_PERIOD_S = 5.0
BARS = {"api_p50_ms": 1.0, "api_bare_ratio": 0.60, "nats_small_rps": 5000.0}


class BenchError(RuntimeError):
    """The benchmark could not run (a child died, a service never became ready...)."""


@dataclass(frozen=True)
class PoolSpec:
    """One benchmark pool: ``size`` static members 10.<octet>.x.y:8000."""

    name: str
    size: int
    octet: int

    @property
    def members(self) -> list[str]:
        return [f"10.{self.octet}.{i // 250}.{i % 250 + 1}:8000" for i in range(self.size)]

    def body(self) -> bytes:
        """The select request body a gateway would send: every member of the pool."""
        return msgspec.json.encode({"pool_name": self.name, "partition": PARTITION,
                                    "members": self.members})


SMALL, MEDIUM, LARGE = (PoolSpec("bench-small", 3, 1), PoolSpec("bench-medium", 100, 2),
                        PoolSpec("bench-large", 1000, 3))
POOLS = (SMALL, MEDIUM, LARGE)


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    rounds: int
    """Bare/API pairs are repeated this many times, alternating which goes first."""
    warmup_s: float
    single_s: float
    """Each 1-connection run."""
    many_s: float
    """Each many-connection run."""
    nats_s: float
    decide_s: float
    """Time budget of each in-process timing block."""


FULL = Plan(rounds=3, warmup_s=0.5, single_s=3.0, many_s=4.0, nats_s=4.0, decide_s=0.3)
QUICK = Plan(rounds=1, warmup_s=0.3, single_s=1.5, many_s=2.0, nats_s=2.0, decide_s=0.15)


# --------------------------------------------------------------------------- fleet data


def config_doc(prefix: str, api_port: int) -> dict[str, Any]:
    """The config every process of the run shares (static pools, quiet logs)."""
    return {
        "global": {"interval": 60, "api_host": "127.0.0.1", "api_port": api_port,
                   "log_level": "WARNING", "prefix": prefix},
        "scheduler": {"pool_fetch_interval": 10, "metrics_fetch_interval": 1000},
        "modes": [{"name": "s1", "w_a": 0.5, "w_b": 0.5}],
        "pools": [{"name": p.name, "partition": PARTITION, "engine_type": "vllm",
                   "source": "static", "members": p.members} for p in POOLS],
    }


class Fleet:
    """What a collector would publish: snapshots and fresh, varied metrics for every pool."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.base: dict[str, tuple[float, float, float]] = {}
        for pool in POOLS:
            for key in pool.members:
                self.base[key] = (float(self.rng.randint(0, 8)), float(self.rng.randint(1, 24)),
                                  self.rng.uniform(0.05, 0.85))

    @staticmethod
    def snapshot(pool: PoolSpec) -> PoolSnapshot:
        infos = [MemberInfo(key=key, host=key.rsplit(":", 1)[0], port=8000, name=key)
                 for key in pool.members]
        return PoolSnapshot(pool=pool.name, partition=PARTITION, engine_type="vllm",
                            source="static", members=infos, fetched_at=time.time())

    def metrics(self, pool: PoolSpec) -> MetricsBatch:
        now = time.time()
        members = []
        for key in pool.members:
            waiting, running, kv = self.base[key]
            jitter = self.rng.uniform(-0.05, 0.05)
            members.append(MemberMetrics(
                key=key, scraped_at=now, ok=True, waiting_queue=waiting + self.rng.randint(0, 1),
                running_req=running, cache_usage=min(max(kv + jitter, 0.0), 1.0)))
        return MetricsBatch(pool=pool.name, partition=PARTITION, members=members,
                            round_started_at=now)


# --------------------------------------------------------------------------- 4c: in-process


def _loop_time(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def time_per_call_us(fn: Callable[[], object], budget_s: float) -> float:
    """Best of three timed loops (timeit style), each about a third of ``budget_s``."""
    n = 1
    while (elapsed := _loop_time(fn, n)) < budget_s / 20:
        n *= 2
    reps = max(1, int(budget_s / 3 / (elapsed / n)))
    return min(_loop_time(fn, reps) / reps for _ in range(3)) * 1e6


def measure_decisions(plan: Plan, mode: str | None = None) -> list[dict[str, Any]]:
    """µs per ``SchedulerCore.select`` (and with the scheduler's/API's codec work around it).

    ``mode``: the pools' routing mode (None: the default); ``greybox`` adds its guard and
    per-member TTFT prediction to every decision, and each decision's outcome (which ends
    its in-flight count) is in the time too.
    """
    from services.api.validation import decode_select
    from shared.config import parse_config
    from shared.scheduling.core import SchedulerCore
    from shared.scheduling.decide import Decision
    from shared.scheduling.plugins.registry import default_registry

    doc = config_doc("bench_inproc", 8080)
    if mode == "greybox":
        doc["modes"].append({"name": "greybox", "type": "greybox"})
        for pool_doc in doc["pools"]:
            pool_doc["mode"] = "greybox"
    config = parse_config(yaml.safe_dump(doc, sort_keys=False))
    core = SchedulerCore(config, default_registry())
    fleet = Fleet()
    request_dec = msgspec.json.Decoder(SelectRequest)
    encode = msgspec.json.Encoder().encode
    results = []
    for pool in POOLS:
        core.view.apply_snapshot(fleet.snapshot(pool))
        req = SelectRequest(pool_name=pool.name, partition=PARTITION, members=pool.members)
        raw = pool.body()

        def select_and_end(req: SelectRequest) -> Decision:
            decision, event = core.select(req)
            if event is not None:  # greybox counts it in flight: its outcome ends it
                core.apply_outcome(OutcomeEvent(request_id=event.request_id, pool=event.pool,
                                                partition=event.partition, member=event.member,
                                                status=200))
            return decision

        def handler(raw: bytes = raw) -> bytes:  # what the scheduler's select endpoint does
            decision = select_and_end(request_dec.decode(raw))
            return encode(SelectReply(answer=decision.answer, reason=decision.reason))

        def api_codec(raw: bytes = raw) -> bytes:  # the API's validation and re-encoding
            return encode(decode_select(raw))

        def fresh_metrics(pool: PoolSpec = pool) -> None:  # stale after 3 s: re-feed
            core.view.apply_metrics(fleet.metrics(pool))

        fresh_metrics()
        check = select_and_end(req)
        if check.reason != "selected":
            raise BenchError(f"in-process select on {pool.name} answered {check}")
        def decide(req: SelectRequest = req) -> object:
            return select_and_end(req)

        decide_us = time_per_call_us(decide, plan.decide_s)
        fresh_metrics()
        handler_us = time_per_call_us(handler, plan.decide_s)
        fresh_metrics()
        api_us = time_per_call_us(api_codec, plan.decide_s)
        fresh_metrics()
        if select_and_end(req).reason != "selected":
            raise BenchError(f"in-process select on {pool.name} stopped selecting: "
                             f"{select_and_end(req)}")
        results.append({
            "pool": pool.name, "mode": mode or "default", "members": pool.size,
            "body_bytes": len(raw),
            "decide_us": round(decide_us, 2),
            "scheduler_handler_us": round(handler_us, 2),
            "api_codec_us": round(api_us, 2),
            "decide_ns_per_member": round(decide_us * 1000 / pool.size, 1),
        })
    return results


# --------------------------------------------------------------------------- child processes


def proc_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of a process (Linux /proc), None when unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A child process in its own session (Ctrl-C reaches only us; we stop it)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str], *,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env, start_new_session=True, pass_fds=pass_fds)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}:\n"
                             f"{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@dataclass
class Stack:
    """The running system under test."""

    workdir: Path
    nats_url: str
    redis_url: str
    prefix: str
    api_url: str
    bare_url: str
    children: dict[str, Child] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Every process whose CPU time we account: api, scheduler, bare, nats (if embedded)."""

    def check(self) -> None:
        for child in self.children.values():
            child.check()

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            value = proc_cpu_s(pid)
            if value is not None:
                out[name] = value
        return out

    def body_file(self, pool: PoolSpec) -> Path:
        path = self.workdir / f"{pool.name}.json"
        if not path.exists():
            path.write_bytes(pool.body())
        return path


@contextlib.contextmanager
def running_stack(keep_logs: bool) -> Iterator[Stack]:
    """NATS, Valkey, one scheduler, one API and the bare server; all stopped on exit."""
    from shared.embedded import nats_server, valkey_server

    workdir = Path(tempfile.mkdtemp(prefix="llmsched-bench-"))
    try:
        with contextlib.ExitStack() as cleanup:
            pids: dict[str, int] = {}
            nats_url = os.environ.get("NATS_URL", "")
            if not nats_url:
                nats = nats_server(workdir=str(workdir)).start()
                cleanup.callback(nats.stop)
                nats_url = nats.url
                assert nats.proc is not None
                pids["nats"] = nats.proc.pid
            redis_url = os.environ.get("REDIS_URL", "")
            if not redis_url:
                valkey = valkey_server(workdir=str(workdir)).start()
                cleanup.callback(valkey.stop)
                redis_url = valkey.url
            prefix = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
            api_port, bare_port = free_port(), free_port()
            config_path = workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(config_doc(prefix, api_port), sort_keys=False))
            env = dict(os.environ, NATS_URL=nats_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
            stack = Stack(workdir=workdir, nats_url=nats_url, redis_url=redis_url, prefix=prefix,
                          api_url=f"http://127.0.0.1:{api_port}",
                          bare_url=f"http://127.0.0.1:{bare_port}", pids=pids)
            service = [sys.executable, "-m", "services"]
            for name, argv in (
                ("scheduler", [*service, "scheduler", "--config", str(config_path)]),
                ("api", [*service, "api", "--config", str(config_path)]),
                ("bare", [sys.executable, str(SCRIPT), "--worker", "bare",
                          "--port", str(bare_port)]),
            ):
                child = Child(name, argv, workdir, env)
                cleanup.callback(child.stop)
                stack.children[name] = child
                pids[name] = child.proc.pid
            yield stack
    except KeyboardInterrupt:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    except BaseException:
        print(f"logs kept in {workdir}", file=sys.stderr)
        raise
    if keep_logs:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- system runs


async def publish_forever(nc: Any, subjects: Subjects, fleet: Fleet) -> None:
    """Snapshots every few seconds and fresh metrics every 0.5 s, like a collector."""
    encode = msgspec.json.Encoder().encode
    last_snapshot = 0.0
    while True:
        now = time.monotonic()
        for pool in POOLS:
            if now - last_snapshot >= SNAPSHOT_PERIOD_S:
                await nc.publish(subjects.pool_snapshot(PARTITION, pool.name),
                                 encode(fleet.snapshot(pool)))
            await nc.publish(subjects.member_metrics(PARTITION, pool.name),
                             encode(fleet.metrics(pool)))
        if now - last_snapshot >= SNAPSHOT_PERIOD_S:
            last_snapshot = now
        await nc.flush()
        await asyncio.sleep(METRICS_PERIOD_S)


async def _poll(what: str, stack: Stack, check: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        stack.check()
        try:
            ok, last = await check()
        except (OSError, TimeoutError, ConnectionError) as err:
            ok, last = False, f"{type(err).__name__}: {err}"
        if ok:
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout_s:.0f} s ({last})")


async def wait_ready(stack: Stack) -> None:
    """API healthy, bare endpoint up, and every pool answering with a member."""

    async def api_healthy() -> tuple[bool, str]:
        status, body = await request_once(f"{stack.api_url}/health", method="GET")
        return status == 200, body.decode(errors="replace")[:200]

    async def bare_up() -> tuple[bool, str]:
        status, body = await request_once(f"{stack.bare_url}/select", b"{}")
        return status == 200 and body.decode() == BARE_ANSWER, f"{status} {body[:100]!r}"

    await _poll("API /health", stack, api_healthy, 40)
    await _poll("bare endpoint", stack, bare_up, 20)
    for pool in POOLS:
        members = set(pool.members)

        async def selecting(pool: PoolSpec = pool, members: set[str] = members
                            ) -> tuple[bool, str]:
            status, body = await request_once(f"{stack.api_url}/scheduler/select", pool.body())
            return status == 200 and body.decode() in members, f"{status} {body[:100]!r}"

        await _poll(f"select on {pool.name}", stack, selecting, 20)


async def _run_json(argv: list[str], what: str) -> dict[str, Any]:
    """Run a load process and parse the JSON it prints; killed if we are interrupted."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=REPO,
                                                start_new_session=True)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        result: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        raise BenchError(f"{what}: load process failed (code {proc.returncode}):\n"
                         f"{err.decode(errors='replace')[-3000:]}") from None
    return result


def _add_cpu(result: dict[str, Any], before: dict[str, float], after: dict[str, float],
             watch: tuple[str, ...]) -> None:
    """Server CPU per request over the whole run (warm-up included, like completed_total)."""
    cpu = {name: round(after[name] - before[name], 3) for name in watch
           if name in before and name in after}
    done = max(int(result.get("completed_total", 0)), 1)
    elapsed = max(float(result.get("elapsed_s", 0.0)), 1e-9)
    result["server_cpu_s"] = cpu
    result["server_cpu_us_per_req"] = {n: round(v / done * 1e6, 1) for n, v in cpu.items()}
    result["server_cores_busy"] = {n: round(v / elapsed, 2) for n, v in cpu.items()}


async def http_run(stack: Stack, label: str, url: str, pool: PoolSpec, connections: int,
                   duration_s: float, warmup_s: float, watch: tuple[str, ...]
                   ) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "loadgen.py"), url, "--body-file",
            str(stack.body_file(pool)), "-c", str(connections), "-d", str(duration_s),
            "--warmup", str(warmup_s), "--json"]
    for body in NOT_SELECTED:
        argv += ["--reject-body", body]
    stack.check()
    before = stack.cpu()
    result = await _run_json(argv, label)
    _add_cpu(result, before, stack.cpu(), watch)
    result.update(label=label, members=pool.size)
    print(f"  {label:<11} {pool.size:>5} members c={connections:<3} "
          f"{result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:.3f} ms  "
          f"p99 {result['p99_ms']:.3f} ms  errors {result['errors']}", flush=True)
    return result


async def nats_run(stack: Stack, pool: PoolSpec, inflight: int, duration_s: float,
                   warmup_s: float) -> dict[str, Any]:
    argv = [sys.executable, str(SCRIPT), "--worker", "nats-load",
            "--nats-url", stack.nats_url, "--subject", Subjects(stack.prefix).select,
            "--body-file", str(stack.body_file(pool)), "--inflight", str(inflight),
            "--duration", str(duration_s), "--warmup", str(warmup_s)]
    stack.check()
    before = stack.cpu()
    result = await _run_json(argv, f"nats {pool.name}")
    _add_cpu(result, before, stack.cpu(), ("scheduler", "nats"))
    result.update(members=pool.size)
    print(f"  nats        {pool.size:>5} members in-flight={inflight:<4}"
          f"{result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:.3f} ms  "
          f"errors {result['errors']}", flush=True)
    return result


async def measure_system(stack: Stack, plan: Plan, connections: int, inflight: int
                         ) -> dict[str, Any]:
    import nats

    nc = await nats.connect(stack.nats_url)
    publisher = asyncio.create_task(publish_forever(nc, Subjects(stack.prefix), Fleet()))
    try:
        await wait_ready(stack)
        select_url = f"{stack.api_url}/scheduler/select"
        bare_url = f"{stack.bare_url}/select"
        api_watch = ("api", "scheduler", "nats")
        runs: list[dict[str, Any]] = []
        print("HTTP (loadgen in its own process):", flush=True)
        for conns, seconds in ((1, plan.single_s), (connections, plan.many_s)):
            for r in range(plan.rounds):
                pair = [("bare", bare_url, ("bare",)), ("api", select_url, api_watch)]
                for label, url, watch in pair if r % 2 == 0 else reversed(pair):
                    result = await http_run(stack, label, url, SMALL, conns, seconds,
                                            plan.warmup_s, watch)
                    runs.append(result | {"round": r})
        for pool in (MEDIUM, LARGE):
            runs.append(await http_run(stack, "api", select_url, pool, connections,
                                       plan.many_s, plan.warmup_s, api_watch) | {"round": 0})
        print(f"NATS direct select (client in its own process, {inflight} in flight):",
              flush=True)
        nats_runs = [await nats_run(stack, pool, inflight, plan.nats_s, plan.warmup_s)
                     for pool in POOLS]
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.drain()
    return {"http_runs": runs, "nats_runs": nats_runs}


# --------------------------------------------------------------------------- workers


def run_bare_server(port: int) -> int:
    """The baseline: FastAPI + uvicorn configured and started exactly like the API."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from shared.http_server import QuietServer, bind_socket

    app = FastAPI()

    @app.post("/select", response_class=PlainTextResponse)
    async def select() -> PlainTextResponse:
        return PlainTextResponse(BARE_ANSWER)

    async def serve() -> None:
        sock = bind_socket("127.0.0.1", port)
        server = QuietServer(uvicorn.Config(app, log_config=None, log_level="warning",
                                            access_log=False, lifespan="off",
                                            timeout_keep_alive=30))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve(sockets=[sock])

    run_fast(serve())
    return 0


async def nats_load(url: str, subject: str, body: bytes, inflight: int, duration_s: float,
                    warmup_s: float) -> dict[str, Any]:
    """``inflight`` request loops against the select subject; latencies of the window."""
    import nats

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    decode = msgspec.json.Decoder(SelectReply).decode
    start = time.perf_counter_ns()
    window_start = start + int(warmup_s * 1e9)
    window_end = window_start + int(duration_s * 1e9)
    latencies: list[int] = []
    tally = {"errors": 0, "completed_total": 0}
    samples: list[str] = []
    cpu: dict[str, float] = {}

    async def worker() -> None:
        while (t0 := time.perf_counter_ns()) < window_end:
            problem = ""
            try:
                msg = await nc.request(subject, body, timeout=5)
                if msg.headers and "Nats-Service-Error-Code" in msg.headers:
                    problem = f"service error {msg.headers}"
                elif (answer := decode(msg.data).answer) in NOT_SELECTED:
                    problem = f"answer {answer}"
            except Exception as err:
                problem = f"{type(err).__name__}: {err}"
            t1 = time.perf_counter_ns()
            tally["completed_total"] += 1
            if not window_start <= t1 <= window_end:
                continue
            if problem:
                tally["errors"] += 1
                if len(samples) < 5:
                    samples.append(problem)
            else:
                latencies.append(t1 - t0)

    async def cpu_marks() -> None:
        await asyncio.sleep(warmup_s)
        cpu["start"] = time.process_time()
        await asyncio.sleep(duration_s)
        cpu["end"] = time.process_time()

    marks = asyncio.create_task(cpu_marks())
    await asyncio.gather(*(worker() for _ in range(inflight)))
    await marks
    await nc.drain()
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q / 100 * len(lat)))] / 1e6, 4) if lat else 0.0

    return {"inflight": inflight, "window_s": duration_s, "requests": len(lat),
            "errors": tally["errors"], "rps": round(len(lat) / duration_s, 1),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "completed_total": tally["completed_total"],
            "elapsed_s": round((time.perf_counter_ns() - start) / 1e9, 4),
            "client_cpu_s": round(cpu.get("end", 0.0) - cpu.get("start", 0.0), 4),
            "error_samples": samples}


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def summarize(decisions: list[dict[str, Any]], system: dict[str, Any], connections: int
              ) -> dict[str, Any]:
    runs = system["http_runs"]

    def pick(label: str, conns: int, members: int = SMALL.size) -> list[dict[str, Any]]:
        return [r for r in runs if r["label"] == label and r["connections"] == conns
                and r["members"] == members]

    bare1, api1 = pick("bare", 1), pick("api", 1)
    bare_n, api_n = pick("bare", connections), pick("api", connections)
    api_p50 = _median([r["p50_ms"] for r in api1])
    bare_p50 = _median([r["p50_ms"] for r in bare1])
    api_rps = _median([r["rps"] for r in api_n])
    bare_rps = _median([r["rps"] for r in bare_n])
    ratio = api_rps / bare_rps if bare_rps else 0.0
    per_round = [round(a["rps"] / b["rps"], 3) for a, b in zip(
        sorted(api_n, key=lambda r: r["round"]), sorted(bare_n, key=lambda r: r["round"]),
        strict=True) if b["rps"]]
    bare_cpu = _median([r["server_cpu_us_per_req"].get("bare", 0.0) for r in bare_n])
    api_cpu = _median([r["server_cpu_us_per_req"].get("api", 0.0) for r in api_n])
    nats_small = next(r for r in system["nats_runs"] if r["members"] == SMALL.size)
    scaling = {d["members"]: d["decide_us"] for d in decisions if d["mode"] == "default"}
    greybox = {d["members"]: d["decide_us"] for d in decisions if d["mode"] == "greybox"}
    return {
        "api_p50_ms_c1": api_p50, "bare_p50_ms_c1": bare_p50,
        "api_added_p50_ms_c1": round(api_p50 - bare_p50, 4),
        "api_rps": api_rps, "bare_rps": bare_rps, "api_bare_ratio": round(ratio, 3),
        "api_bare_ratio_per_round": per_round,
        "bare_cpu_us_per_req": bare_cpu, "api_process_cpu_us_per_req": api_cpu,
        "api_bare_cpu_ratio": round(bare_cpu / api_cpu, 3) if api_cpu else 0.0,
        "api_rps_by_members": {str(m): _median([r["rps"] for r in pick("api", connections, m)])
                               for m in (p.size for p in POOLS)},
        "nats_rps_by_members": {str(r["members"]): r["rps"] for r in system["nats_runs"]},
        "decide_us_by_members": {str(k): v for k, v in scaling.items()},
        "decide_1000_over_100": round(scaling[LARGE.size] / scaling[MEDIUM.size], 2),
        "greybox_decide_1000_us": round(greybox[LARGE.size], 1),
        "bars": {
            "api_p50_le_1ms": api_p50 <= BARS["api_p50_ms"],
            "api_bare_ratio_ge_0.60": ratio >= BARS["api_bare_ratio"],
            "nats_small_ge_5000": nats_small["rps"] >= BARS["nats_small_rps"],
        },
    }


def _cpu_cell(run: dict[str, Any], names: tuple[str, ...]) -> str:
    per = run.get("server_cpu_us_per_req", {})
    return " + ".join(f"{per[n]:.0f}" for n in names if n in per) or "-"


def print_report(meta: dict[str, Any], decisions: list[dict[str, Any]],
                 system: dict[str, Any], summary: dict[str, Any], connections: int) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    runs = system["http_runs"]
    bars = summary["bars"]
    print()
    print(f"=== llmsched select benchmark — {meta['started']}  ({meta['mode']}, "
          f"{meta['cpus']} CPUs, Python {meta['python']}, load before {meta['loadavg']}) ===")
    print("\nHTTP, 3-member pool, same load tool (medians over rounds)")
    print(f"  {'':<26}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'err':>5}"
          f"{'client cores':>14}   server CPU µs/req")
    rows: list[tuple[str, str, int, int, tuple[str, ...]]] = [
        ("bare FastAPI, 1 conn", "bare", 1, SMALL.size, ("bare",)),
        ("API select, 1 conn", "api", 1, SMALL.size, ("api", "scheduler", "nats")),
        (f"bare FastAPI, {connections} conn", "bare", connections, SMALL.size, ("bare",)),
        (f"API select, {connections} conn", "api", connections, SMALL.size,
         ("api", "scheduler", "nats")),
        (f"API 100 members, {connections} c", "api", connections, MEDIUM.size,
         ("api", "scheduler", "nats")),
        (f"API 1000 members, {connections} c", "api", connections, LARGE.size,
         ("api", "scheduler", "nats")),
    ]
    for title, label, conns, members, cpu_names in rows:
        sel = [r for r in runs if r["label"] == label and r["connections"] == conns
               and r["members"] == members]
        if not sel:
            continue
        mid = sorted(sel, key=lambda r: r["rps"])[len(sel) // 2]
        print(f"  {title:<26}{_median([r['rps'] for r in sel]):>10,.0f}"
              f"{_median([r['p50_ms'] for r in sel]):>9.3f}"
              f"{_median([r['p90_ms'] for r in sel]):>9.3f}"
              f"{_median([r['p99_ms'] for r in sel]):>9.3f}"
              f"{sum(r['errors'] for r in sel):>5}"
              f"{mid['client_cpu_s'] / max(mid['window_s'], 1e-9):>14.2f}"
              f"   {_cpu_cell(mid, cpu_names)}")
    print("  (API CPU column: api + scheduler + nats-server)")
    print(f"  → API p50 at 1 connection {summary['api_p50_ms_c1']:.3f} ms (bare "
          f"{summary['bare_p50_ms_c1']:.3f} ms, added {summary['api_added_p50_ms_c1']:+.3f} ms)"
          f"; bar ≤ 1 ms: {verdict(bars['api_p50_le_1ms'])}")
    print(f"  → API/bare throughput at {connections} connections "
          f"{summary['api_bare_ratio']:.2f} (rounds: {summary['api_bare_ratio_per_round']});"
          f" bar ≥ 0.60: {verdict(bars['api_bare_ratio_ge_0.60'])}")
    print(f"  → CPU per request, bare process / API process: {summary['bare_cpu_us_per_req']:.0f}"
          f" / {summary['api_process_cpu_us_per_req']:.0f} µs = "
          f"{summary['api_bare_cpu_ratio']:.2f} (the throughput ratio to expect when the"
          " scheduler and NATS have cores of their own)")
    print("\nNATS direct select, one scheduler process")
    print(f"  {'members':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}"
          f"{'sched µs/req':>14}{'sched cores':>13}{'client cores':>14}")
    for r in system["nats_runs"]:
        print(f"  {r['members']:<10}{r['rps']:>10,.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['errors']:>5}{r['server_cpu_us_per_req'].get('scheduler', 0):>14.0f}"
              f"{r['server_cores_busy'].get('scheduler', 0):>13.2f}"
              f"{r['client_cpu_s'] / max(r['window_s'], 1e-9):>14.2f}")
    print(f"  → 3-member pool {summary['nats_rps_by_members'][str(SMALL.size)]:,.0f}/s;"
          f" bar ≥ 5,000/s: {verdict(bars['nats_small_ge_5000'])}")
    print("\nDecision cost in-process (best of 3)")
    print(f"  {'mode':<9}{'members':<10}{'decide µs':>11}{'ns/member':>11}"
          f"{'sched handler µs':>18}{'API codec µs':>14}")
    for d in decisions:
        print(f"  {d['mode']:<9}{d['members']:<10}{d['decide_us']:>11.2f}"
              f"{d['decide_ns_per_member']:>11.1f}{d['scheduler_handler_us']:>18.2f}"
              f"{d['api_codec_us']:>14.2f}")
    print(f"  → 1000 vs 100 members: ×{summary['decide_1000_over_100']} (linear would be ×10)")
    greybox_us = summary["greybox_decide_1000_us"]
    print(f"  → greybox, 1000 members: {greybox_us / 1000:.3f} ms per decision; bar ≤ 2 ms: "
          f"{verdict(greybox_us <= 2000)}")


def versions() -> dict[str, str]:
    out = {}
    for dist in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "nats-py",
                 "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _raise_on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmark(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    started = datetime.now()
    meta = {"started": started.isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full", "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "connections": args.connections, "nats_inflight": args.inflight,
            "plan": plan.__dict__, "versions": versions()}
    print("Decision cost in-process...", flush=True)
    decisions = measure_decisions(plan) + measure_decisions(plan, "greybox")
    with running_stack(args.keep_logs) as stack:
        system = run_fast(measure_system(stack, plan, args.connections, args.inflight))
    summary = summarize(decisions, system, args.connections)
    print_report(meta, decisions, system, summary, args.connections)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"select-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary, "decisions": decisions,
                               **system}, indent=2))
    print(f"\nresults written to {out.relative_to(REPO)} "
          f"({time.monotonic() - args.t0:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmsched select-path benchmark")
    parser.add_argument("--quick", action="store_true", help="short runs (about 30 s)")
    parser.add_argument("--connections", type=int, default=32,
                        help="connections for the throughput runs (default 32)")
    parser.add_argument("--inflight", type=int, default=128,
                        help="NATS requests in flight (default 128)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the child logs")
    worker = parser.add_argument_group("internal (child processes)")
    worker.add_argument("--worker", choices=("bare", "nats-load"), help=argparse.SUPPRESS)
    worker.add_argument("--port", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--nats-url", help=argparse.SUPPRESS)
    worker.add_argument("--subject", help=argparse.SUPPRESS)
    worker.add_argument("--body-file", type=Path, help=argparse.SUPPRESS)
    worker.add_argument("--duration", type=float, default=2.0, help=argparse.SUPPRESS)
    worker.add_argument("--warmup", type=float, default=0.3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.t0 = time.monotonic()
    if args.worker == "bare":
        return run_bare_server(args.port)
    if args.worker == "nats-load":
        result = run_fast(nats_load(args.nats_url, args.subject, args.body_file.read_bytes(),
                                    args.inflight, args.duration, args.warmup))
        print(json.dumps(result))
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        return run_benchmark(args)
    except BenchError as err:
        print(f"select_bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("select_bench: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
