"""Gateway benchmark: llmsched's OpenAI gateway against direct calls and against vllm-router.

Every path gets the same request bytes from the same load tool, on the same fake engines
(``bench/fast_backend.py``, three processes):

- **direct**: straight to one backend;
- **llmsched**: ``POST /v1/chat/completions`` on one API process (NATS ``route`` call to one
  scheduler process, aiohttp to the chosen backend, chunk-by-chunk relay, an outcome event),
  with one collector scraping the backends' ``/metrics``;
- **vllm-router** with ``round_robin`` and with ``power_of_two`` over the three backends.

Figures: added latency at one connection, throughput at 32 and 128 connections and the ratio
llmsched / vllm-router, SSE first-chunk time and inter-chunk gaps, CPU seconds per process.
Then the API's cost per request is split into layers, each a process measured like the API at
32 connections: a bare ASGI app on uvicorn (constant answer), the same app relaying to the
backends through the gateway's own ``Upstream`` (aiohttp, no NATS), the API's select fast path
(ASGI + one NATS request to the scheduler), and the gateway itself.

Run ``.venv/bin/python bench/gateway_bench.py [--quick]``; results are printed and written to
``bench/results/gateway-<timestamp>.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from fast_backend import Backend  # bench/ is sys.path[0] when run as a script
from loadgen import request_once, run_fast
from select_bench import BenchError, Child, proc_cpu_s

from shared.http_server import bind_socket, free_port

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
REPO = HERE.parent

ALIAS = "bench-model"
BACKENDS = ("b1", "b2", "b3")
CHUNKS = 20
GAP_MS = 5.0
PEERS_VENV = Path("/tmp/peers")
BARS = {"added_p50_ms": 1.0, "throughput_ratio": 0.5, "gap_tolerance": 0.10}

PATHS = ("direct", "llmsched", "vr-rr", "vr-p2c")
TITLES = {"direct": "direct (one backend)", "llmsched": "llmsched gateway",
          "vr-rr": "vllm-router round_robin", "vr-p2c": "vllm-router power_of_two"}
POLICIES = {"vr-rr": "round_robin", "vr-p2c": "power_of_two"}
NOT_SELECTED = (b"none", b"fallback")
LAYERS = ("asgi-const", "asgi-relay", "api-select", "llmsched")
LAYER_TITLES = {"asgi-const": "uvicorn, bare ASGI, constant", "asgi-relay":
                "uvicorn + aiohttp relay", "api-select": "API select (ASGI + NATS)",
                "llmsched": "API gateway"}
LAYER_PROCS = {"asgi-const": ("asgi-const",), "asgi-relay": ("asgi-relay",),
               "api-select": ("api", "scheduler", "nats"),
               "llmsched": ("api", "scheduler", "nats")}
PROXY_PROCS = {"direct": (), "llmsched": ("api", "scheduler", "nats", "collector", "valkey"),
               "vr-rr": ("router-rr",), "vr-p2c": ("router-p2c",)}
"""The processes each path adds in front of the backends (CPU accounting)."""

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence, please."}]
CHAT_BODY = json.dumps({"model": ALIAS, "messages": MESSAGES, "max_tokens": CHUNKS},
                       separators=(",", ":")).encode()
STREAM_BODY = json.dumps({"model": ALIAS, "messages": MESSAGES, "max_tokens": CHUNKS,
                          "stream": True}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    rounds: int
    """Every measurement is repeated this many times, the path order reversed each round."""
    warmup_s: float
    single_s: float
    """Each 1-connection latency run."""
    many_s: float
    """Each throughput run."""
    stream_s: float
    """Each streaming run."""
    many_connections: tuple[int, ...] = (32, 128)
    stream_connections: tuple[int, ...] = (1, 32)
    layers_connections: tuple[int, ...] = (1, 32)


FULL = Plan(rounds=3, warmup_s=0.5, single_s=2.5, many_s=3.0, stream_s=3.0)
QUICK = Plan(rounds=1, warmup_s=0.3, single_s=1.5, many_s=2.0, stream_s=2.0)


# --------------------------------------------------------------------------- processes


def config_doc(prefix: str, api_port: int, backend_ports: list[int], max_ongoing: int,
               decide: str = "local") -> dict[str, Any]:
    """One static pool of the backends, served under ``model: bench-model``."""
    return {
        "global": {"interval": 60, "api_host": "127.0.0.1", "api_port": api_port,
                   "log_level": "WARNING", "prefix": prefix},
        "scheduler": {"pool_fetch_interval": 10, "metrics_fetch_interval": 1000},
        "modes": [{"name": "s1", "w_a": 0.5, "w_b": 0.5}],
        "gateway": {"max_ongoing_requests": max_ongoing, "decide": decide},
        "pools": [{"name": "bench-gw", "partition": "Common", "engine_type": "vllm",
                   "source": "static", "model": ALIAS,
                   "members": [f"127.0.0.1:{port}" for port in backend_ports]}],
    }


def ensure_vllm_router(venv: Path) -> Path:
    """The vllm-router launcher, installed from PyPI into its own venv when missing."""
    exe = venv / "bin" / "vllm-router"
    if exe.exists():
        return exe
    print(f"Installing vllm-router into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "vllm-router"], check=True)
    if not exe.exists():
        raise BenchError(f"pip installed vllm-router but {exe} is missing")
    return exe


def vllm_router_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('vllm-router'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


@dataclass
class Stack:
    """The running processes and where each path is reached."""

    workdir: Path
    urls: dict[str, str]
    """Path label → base URL."""
    children: dict[str, Child] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    select_body: bytes = b""
    """The API select fast path's request: the gateway pool and its members."""

    def check(self) -> None:
        for child in self.children.values():
            child.check()

    def cpu(self) -> dict[str, float]:
        """CPU seconds per process name; ``api#2``, ``api#3``... count as ``api``."""
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            value = proc_cpu_s(pid)
            if value is not None:
                base = name.split("#", 1)[0]
                out[base] = out.get(base, 0.0) + value
        return out


@contextlib.contextmanager
def running_stack(keep_logs: bool, router_exe: Path, max_ongoing: int,
                  decide: str = "local", api_processes: int = 1) -> Iterator[Stack]:
    """NATS, Valkey, three backends, scheduler + collector + API, two vllm-routers."""
    from shared.embedded import nats_server, valkey_server

    workdir = Path(tempfile.mkdtemp(prefix="llmsched-gwbench-"))
    try:
        with contextlib.ExitStack() as cleanup:
            pids: dict[str, int] = {}
            nats = nats_server(workdir=str(workdir)).start()
            cleanup.callback(nats.stop)
            valkey = valkey_server(workdir=str(workdir)).start()
            cleanup.callback(valkey.stop)
            assert nats.proc is not None and valkey.proc is not None
            pids["nats"], pids["valkey"] = nats.proc.pid, valkey.proc.pid
            prefix = f"gwbench_{os.getpid()}_{secrets.token_hex(3)}"
            backend_ports = [free_port() for _ in BACKENDS]
            api_port = free_port()
            config_path = workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(
                config_doc(prefix, api_port, backend_ports, max_ongoing, decide),
                sort_keys=False))
            env = dict(os.environ, NATS_URL=nats.url, REDIS_URL=valkey.url,
                       PYTHONUNBUFFERED="1")
            backend_urls = [f"http://127.0.0.1:{port}" for port in backend_ports]
            stack = Stack(workdir=workdir, urls={"direct": backend_urls[0],
                                                 "llmsched": f"http://127.0.0.1:{api_port}"},
                          pids=pids)
            argvs: list[tuple[str, list[str]]] = [
                (name, [sys.executable, str(HERE / "fast_backend.py"), "--port", str(port),
                        "--name", name, "--chunks", str(CHUNKS), "--gap-ms", str(GAP_MS)])
                for name, port in zip(BACKENDS, backend_ports, strict=True)]
            service = [sys.executable, "-m", "services"]
            argvs += [(name, [*service, name, "--config", str(config_path)])
                      for name in ("scheduler", "collector")]
            fds: dict[str, tuple[int, ...]] = {}
            if api_processes == 1:
                argvs.append(("api", [*service, "api", "--config", str(config_path)]))
            else:  # as `llmsched up` runs them: every process accepts on one socket
                sock = bind_socket("127.0.0.1", api_port)
                cleanup.callback(sock.close)
                for i in range(api_processes):
                    name = "api" if i == 0 else f"api#{i + 1}"
                    argvs.append((name, [*service, "api", "--config", str(config_path),
                                         "--listen-fd", str(sock.fileno())]))
                    fds[name] = (sock.fileno(),)
            for layer in ("asgi-const", "asgi-relay"):
                port = free_port()
                stack.urls[layer] = f"http://127.0.0.1:{port}"
                argvs.append((layer, [sys.executable, str(SCRIPT), "--worker", layer,
                                      "--port", str(port), "--upstreams", *backend_urls]))
            stack.urls["api-select"] = stack.urls["llmsched"]
            stack.select_body = json.dumps({
                "pool_name": "bench-gw", "partition": "Common",
                "members": [f"127.0.0.1:{port}" for port in backend_ports]}).encode()
            for label, policy in POLICIES.items():
                port = free_port()
                stack.urls[label] = f"http://127.0.0.1:{port}"
                argvs.append((f"router-{label[3:]}", [
                    str(router_exe), "--host", "127.0.0.1", "--port", str(port),
                    "--worker-urls", *backend_urls, "--policy", policy,
                    "--prometheus-port", str(free_port()), "--log-level", "warning",
                    "--worker-startup-check-interval", "1"]))
            for name, argv in argvs:
                child = Child(name, argv, workdir, env, pass_fds=fds.get(name, ()))
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


async def _poll(what: str, stack: Stack, check: Callable[[], Awaitable[tuple[bool, str]]],
                timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        stack.check()
        try:
            ok, last = await check()
        except (OSError, TimeoutError, ConnectionError, ValueError) as err:
            ok, last = False, f"{type(err).__name__}: {err}"
        if ok:
            return
        await asyncio.sleep(0.2)
    raise BenchError(f"{what} not ready after {timeout_s:.0f} s ({last})")


async def wait_ready(stack: Stack) -> None:
    """Every path answers a chat request with 200 (the gateway once metrics are scraped)."""
    for path in PATHS:
        url = f"{stack.urls[path]}/v1/chat/completions"

        async def answers(url: str = url) -> tuple[bool, str]:
            status, body = await request_once(url, CHAT_BODY)
            return status == 200 and b"chat.completion" in body, f"{status} {body[:200]!r}"

        await _poll(f"{path} ({url})", stack, answers, 60)
    for layer in ("asgi-const", "asgi-relay"):
        url = f"{stack.urls[layer]}/v1/chat/completions"

        async def layer_up(url: str = url) -> tuple[bool, str]:
            status, body = await request_once(url, CHAT_BODY)
            return status == 200 and b"chat.completion" in body, f"{status} {body[:200]!r}"

        await _poll(f"{layer} ({url})", stack, layer_up, 30)

    async def selects() -> tuple[bool, str]:
        status, body = await request_once(f"{stack.urls['api-select']}/scheduler/select",
                                          stack.select_body)
        return status == 200 and body not in NOT_SELECTED, f"{status} {body[:200]!r}"

    await _poll("API select fast path", stack, selects, 30)


# --------------------------------------------------------------------------- load runs


async def _run_json(argv: list[str], what: str) -> dict[str, Any]:
    """Run a load process and parse the JSON line it prints; killed if we are interrupted."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=REPO,
                                                start_new_session=True)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"{what}: load process failed (code {proc.returncode}):\n"
                         f"{out.decode(errors='replace')[-1500:]}\n"
                         f"{err.decode(errors='replace')[-3000:]}") from None
    return result


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


async def wrk_load(stack: Stack, url: str, body: bytes, connections: int, duration_s: float,
                   warmup_s: float) -> dict[str, Any]:
    """The same request with wrk (two threads); a warm-up run first, not measured."""
    body_path = stack.workdir / "wrk-body.json"
    body_path.write_bytes(body)
    script = stack.workdir / "wrk.lua"
    script.write_text(WRK_SCRIPT.format(body=body_path))
    base = ["wrk", "-t", "2", "-c", str(connections), "-s", str(script), "--timeout", "10s"]
    if warmup_s > 0:
        await _run_json([*base, "-d", "1s", url], "wrk warm-up")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = max(1, round(duration_s))
    raw = await _run_json([*base, "-d", f"{seconds}s", url], "wrk")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    window = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = raw["requests"] - raw["status"]
    return {"url": url, "connections": connections, "window_s": round(window, 4),
            "requests": ok, "errors": errors, "rps": round(ok / window, 1),
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000,
            "mean_ms": raw["mean_us"] / 1000, "completed_total": raw["requests"],
            "elapsed_s": round(window, 4),
            "client_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                  - before.ru_stime, 4),
            "error_samples": [f"wrk errors {raw}"] if errors else []}


def loadgen_argv(url: str, body_file: Path, connections: int, duration_s: float,
                 warmup_s: float, stream: bool) -> list[str]:
    argv = [sys.executable, str(HERE / "loadgen.py"), url, "--body-file", str(body_file),
            "-c", str(connections), "-d", str(duration_s), "--warmup", str(warmup_s),
            "--timeout", "20", "--json"]
    for rejected in NOT_SELECTED:  # only the select fast path answers like this
        argv += ["--reject-body", rejected.decode()]
    if stream:
        argv += ["--sse", "--expect-events", str(CHUNKS)]
    return argv


def _cpu_figures(result: dict[str, Any], before: dict[str, float], after: dict[str, float]
                 ) -> None:
    """Server CPU per request over the whole run (warm-up included, like completed_total)."""
    cpu = {name: round(after[name] - before[name], 3) for name in before if name in after}
    done = max(int(result.get("completed_total", 0)), 1)
    elapsed = max(float(result.get("elapsed_s", 0.0)), 1e-9)
    result["server_cpu_s"] = cpu
    result["server_cpu_us_per_req"] = {n: round(v / done * 1e6, 1) for n, v in cpu.items()}
    result["server_cores_busy"] = {n: round(v / elapsed, 2) for n, v in cpu.items()}


async def run_one(stack: Stack, kind: str, path: str, connections: int, seconds: float,
                  warmup_s: float, tool: str) -> dict[str, Any]:
    """One measured run of ``kind`` (latency, throughput, stream) on ``path``."""
    stream = kind == "stream"
    body = STREAM_BODY if stream else CHAT_BODY
    body_file = stack.workdir / ("stream.json" if stream else "chat.json")
    url = f"{stack.urls[path]}/v1/chat/completions"
    if path == "api-select":
        body, body_file = stack.select_body, stack.workdir / "select.json"
        url = f"{stack.urls[path]}/scheduler/select"
    if not body_file.exists():
        body_file.write_bytes(body)
    stack.check()
    before = stack.cpu()
    if tool == "wrk":
        result = await wrk_load(stack, url, body, connections, seconds, warmup_s)
    else:
        result = await _run_json(loadgen_argv(url, body_file, connections, seconds, warmup_s,
                                              stream), f"{kind} {path}")
    _cpu_figures(result, before, stack.cpu())
    result.update(kind=kind, path=path, tool=tool)
    title = LAYER_TITLES[path] if kind == "layer" else TITLES[path]
    line = (f"  {kind:<10} {title:<29} c={connections:<4}{result['rps']:>9,.0f} req/s"
            f"  p50 {result['p50_ms']:8.3f} ms  p99 {result['p99_ms']:8.3f} ms"
            f"  err {result['errors']}")
    if stream:
        line += (f"  first {result['ttfe_p50_ms']:.3f}/{result['ttfe_p99_ms']:.3f} ms"
                 f"  gap {result['gap_p50_ms']:.3f}/{result['gap_p99_ms']:.3f} ms")
    print(line, flush=True)
    if result["errors"]:
        print(f"    errors: {result.get('error_samples')}", flush=True)
    return result


async def measure(stack: Stack, plan: Plan, tool: str, layers: bool) -> list[dict[str, Any]]:
    await wait_ready(stack)
    steps: list[tuple[str, int, float, str]] = [("latency", 1, plan.single_s, "loadgen")]
    steps += [("throughput", c, plan.many_s, tool) for c in plan.many_connections]
    steps += [("stream", c, plan.stream_s, "loadgen") for c in plan.stream_connections]
    if layers:
        steps += [("layer", c, plan.single_s if c == 1 else plan.many_s, "loadgen")
                  for c in plan.layers_connections]
    runs: list[dict[str, Any]] = []
    for kind, connections, seconds, step_tool in steps:
        paths = LAYERS if kind == "layer" else PATHS
        for r in range(plan.rounds):
            order = paths if r % 2 == 0 else tuple(reversed(paths))
            for path in order:
                result = await run_one(stack, kind, path, connections, seconds, plan.warmup_s,
                                       step_tool)
                runs.append(result | {"round": r})
    return runs


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _pick(runs: list[dict[str, Any]], kind: str, path: str, connections: int
          ) -> list[dict[str, Any]]:
    return [r for r in runs if r["kind"] == kind and r["path"] == path
            and r["connections"] == connections]


def _cpu_us(run: dict[str, Any], names: tuple[str, ...]) -> float:
    per = run.get("server_cpu_us_per_req", {})
    return float(sum(per.get(n, 0.0) for n in names))


def row(runs: list[dict[str, Any]], kind: str, path: str, connections: int
        ) -> dict[str, Any] | None:
    """Medians over rounds of one (kind, path, connections) cell."""
    sel = _pick(runs, kind, path, connections)
    if not sel:
        return None
    procs = LAYER_PROCS[path] if kind == "layer" else PROXY_PROCS[path]
    out: dict[str, Any] = {"runs": len(sel), "errors": sum(r["errors"] for r in sel)}
    keys = ["rps", "p50_ms", "p90_ms", "p99_ms"]
    if kind == "stream":
        keys += ["ttfe_p50_ms", "ttfe_p99_ms", "gap_p50_ms", "gap_p99_ms", "gap_max_ms"]
    for key in keys:
        out[key] = round(_median([r[key] for r in sel]), 4)
    out["client_cores"] = round(_median([r["client_cpu_s"] / max(r["window_s"], 1e-9)
                                         for r in sel]), 2)
    out["proxy_cpu_us"] = round(_median([_cpu_us(r, procs) for r in sel]), 1)
    out["backends_cpu_us"] = round(_median([_cpu_us(r, BACKENDS) for r in sel]), 1)
    out["proxy_cpu_split_us"] = {n: round(_median([r["server_cpu_us_per_req"].get(n, 0.0)
                                                   for r in sel]), 1) for n in procs}
    out["proxy_cores"] = round(_median([sum(r["server_cores_busy"].get(n, 0.0)
                                            for n in procs) for r in sel]), 2)
    out["backend_cores"] = round(_median([sum(r["server_cores_busy"].get(n, 0.0)
                                              for n in BACKENDS) for r in sel]), 2)
    return out


def summarize(runs: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    kinds = [("latency", 1)] + [("throughput", c) for c in plan.many_connections] + [
        ("stream", c) for c in plan.stream_connections]
    kinds += [("layer", c) for c in plan.layers_connections]
    for kind, connections in kinds:
        for path in LAYERS if kind == "layer" else PATHS:
            cell = row(runs, kind, path, connections)
            if cell is not None:
                cells[f"{kind}/c{connections}/{path}"] = cell

    def get(kind: str, c: int, path: str) -> dict[str, Any]:
        cell: dict[str, Any] = cells.get(f"{kind}/c{c}/{path}", {})
        return cell

    direct1, gw1 = get("latency", 1, "direct"), get("latency", 1, "llmsched")
    added = {path: {"p50_ms": round(get("latency", 1, path).get("p50_ms", 0.0)
                                    - direct1.get("p50_ms", 0.0), 4),
                    "p99_ms": round(get("latency", 1, path).get("p99_ms", 0.0)
                                    - direct1.get("p99_ms", 0.0), 4)}
             for path in PATHS if path != "direct"}
    ratios: dict[str, Any] = {}
    for c in plan.many_connections:
        gw = get("throughput", c, "llmsched").get("rps", 0.0)
        by_policy = {p: get("throughput", c, p).get("rps", 0.0) for p in POLICIES}
        best = max(by_policy.values()) if by_policy else 0.0
        per_round = []
        for r in range(plan.rounds):
            g = [x["rps"] for x in _pick(runs, "throughput", "llmsched", c) if x["round"] == r]
            v = [x["rps"] for p in POLICIES for x in _pick(runs, "throughput", p, c)
                 if x["round"] == r]
            if g and v and max(v):
                per_round.append(round(g[0] / max(v), 3))
        ratios[f"c{c}"] = {
            "llmsched_rps": gw, **{f"{p}_rps": v for p, v in by_policy.items()},
            **{f"vs_{p}": round(gw / v, 3) if v else 0.0 for p, v in by_policy.items()},
            "vs_best": round(gw / best, 3) if best else 0.0, "per_round_vs_best": per_round}
    streams: dict[str, Any] = {}
    for c in plan.stream_connections:
        d = get("stream", c, "direct")
        out: dict[str, Any] = {}
        for path in PATHS:
            if path == "direct":
                continue
            s = get("stream", c, path)
            out[path] = {
                key: round(s.get(key, 0.0) / d[key], 3) if d.get(key) else 0.0
                for key in ("gap_p50_ms", "gap_p99_ms")} | {
                "added_ttfe_p50_ms": round(s.get("ttfe_p50_ms", 0.0)
                                           - d.get("ttfe_p50_ms", 0.0), 4)}
        streams[f"c{c}"] = out
    tol = BARS["gap_tolerance"]
    bars = {"added_p50_le_1ms": added["llmsched"]["p50_ms"] <= BARS["added_p50_ms"]}
    for c in plan.many_connections:
        bars[f"throughput_c{c}_ge_0.5x_vllm_router"] = (
            ratios[f"c{c}"]["vs_best"] >= BARS["throughput_ratio"])
    for c in plan.stream_connections:
        gw = streams[f"c{c}"]["llmsched"]
        bars[f"stream_c{c}_gap_p50_within_10pct"] = abs(gw["gap_p50_ms"] - 1) <= tol
        bars[f"stream_c{c}_gap_p99_within_10pct"] = abs(gw["gap_p99_ms"] - 1) <= tol
    layer_cpu: dict[str, dict[str, float]] = {}
    layer_p50: dict[str, dict[str, float]] = {}
    for c in plan.layers_connections:
        for layer in LAYERS:
            cell = get("layer", c, layer)
            if cell:
                layer_cpu.setdefault(f"c{c}", {})[layer] = cell["proxy_cpu_split_us"].get(
                    "api", cell["proxy_cpu_us"])
                layer_p50.setdefault(f"c{c}", {})[layer] = cell["p50_ms"]
    return {"cells": cells, "added_latency_c1": added, "llmsched_p50_ms_c1": gw1.get("p50_ms"),
            "direct_p50_ms_c1": direct1.get("p50_ms"), "throughput_ratio": ratios,
            "stream_vs_direct": streams, "front_process_cpu_us_by_layer": layer_cpu,
            "p50_ms_by_layer": layer_p50, "bars": bars}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _print_layers(summary: dict[str, Any], c: int) -> None:
    cells = summary["cells"]
    if not any(f"layer/c{c}/{layer}" in cells for layer in LAYERS):
        return
    what = "latency" if c == 1 else "CPU"
    print(f"\nwhere the API's {what} goes: each layer alone, non-streaming, {c} connection"
          f"{'s' if c > 1 else ''}")
    print(f"  {'':<31}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}"
          f"{'front µs/req':>14}  all µs/req")
    for layer in LAYERS:
        cell = cells.get(f"layer/c{c}/{layer}")
        if cell is None:
            continue
        split = cell["proxy_cpu_split_us"]
        front = split.get("api", cell["proxy_cpu_us"])
        detail = " + ".join(f"{n} {v:.0f}" for n, v in split.items())
        print(f"  {LAYER_TITLES[layer]:<31}{cell['rps']:>9,.0f}{cell['p50_ms']:>9.3f}"
              f"{cell['p99_ms']:>9.3f}{cell['errors']:>5}{front:>14.0f}  {detail}")
    by = summary["front_process_cpu_us_by_layer"].get(f"c{c}", {})
    p50 = summary["p50_ms_by_layer"].get(f"c{c}", {})
    if len(by) == len(LAYERS):
        print(f"  → front process µs/req: uvicorn floor {by['asgi-const']:.0f}; aiohttp relay "
              f"+{by['asgi-relay'] - by['asgi-const']:.0f}; the gateway's own work (NATS "
              f"route, events, tasks, parsing) +{by['llmsched'] - by['asgi-relay']:.0f}; total "
              f"{by['llmsched']:.0f} (select fast path alone: {by['api-select']:.0f})")
    if len(p50) == len(LAYERS) and c == 1:
        print(f"  → p50 ms: uvicorn floor {p50['asgi-const']:.3f}; aiohttp relay "
              f"+{p50['asgi-relay'] - p50['asgi-const']:.3f}; gateway's own work "
              f"+{p50['llmsched'] - p50['asgi-relay']:.3f} (select fast path alone "
              f"{p50['api-select']:.3f})")


def print_report(meta: dict[str, Any], summary: dict[str, Any], plan: Plan) -> None:
    cells = summary["cells"]
    bars = summary["bars"]
    print()
    print(f"=== llmsched gateway benchmark — {meta['started']}  ({meta['mode']}, "
          f"{meta['cpus']} CPUs, Python {meta['python']}, vllm-router "
          f"{meta['versions'].get('vllm-router')}) ===")
    print(f"uptime before: {meta['uptime_before']}")
    print(f"uptime after:  {meta['uptime_after']}")
    print(f"backends: {len(BACKENDS)} x fast_backend.py ({CHUNKS} chunks x {GAP_MS:g} ms when "
          f"streaming); throughput tool: {meta['throughput_tool']}; medians of "
          f"{plan.rounds} round(s)")
    head = (f"  {'':<27}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}{'client':>8}"
            f"{'proxy µs/req':>14}{'backends':>10}  proxy split µs/req")
    for kind, conns in [("latency", (1,)), ("throughput", plan.many_connections)]:
        for c in conns:
            print(f"\nnon-streaming chat, {c} connection{'s' if c > 1 else ''}")
            print(head)
            for path in PATHS:
                cell = cells.get(f"{kind}/c{c}/{path}")
                if cell is None:
                    continue
                split = " + ".join(f"{n} {v:.0f}" for n, v in cell["proxy_cpu_split_us"].items()
                                   if v >= 0.5) or "-"
                print(f"  {TITLES[path]:<27}{cell['rps']:>9,.0f}{cell['p50_ms']:>9.3f}"
                      f"{cell['p99_ms']:>9.3f}{cell['errors']:>5}{cell['client_cores']:>8.2f}"
                      f"{cell['proxy_cpu_us']:>14.0f}{cell['backends_cpu_us']:>10.0f}  {split}")
    for c in plan.stream_connections:
        print(f"\nstreaming chat ({CHUNKS} chunks x {GAP_MS:g} ms), {c} connection"
              f"{'s' if c > 1 else ''}")
        print(f"  {'':<27}{'streams/s':>10}{'first p50':>10}{'first p99':>10}{'gap p50':>9}"
              f"{'gap p99':>9}{'gap max':>9}{'err':>5}{'proxy µs/stream':>17}")
        for path in PATHS:
            cell = cells.get(f"stream/c{c}/{path}")
            if cell is None:
                continue
            print(f"  {TITLES[path]:<27}{cell['rps']:>10,.1f}{cell['ttfe_p50_ms']:>10.3f}"
                  f"{cell['ttfe_p99_ms']:>10.3f}{cell['gap_p50_ms']:>9.3f}"
                  f"{cell['gap_p99_ms']:>9.3f}{cell['gap_max_ms']:>9.3f}{cell['errors']:>5}"
                  f"{cell['proxy_cpu_us']:>17.0f}")
    for c in plan.layers_connections:
        _print_layers(summary, c)
    added = summary["added_latency_c1"]
    print("\n  (llmsched proxy CPU = api + scheduler + nats-server + collector + valkey: the "
          "gateway path costs two Python processes, API and scheduler, plus nats-server)")
    print(f"\n  → added latency at 1 connection (vs direct): llmsched p50 "
          f"{added['llmsched']['p50_ms']:+.3f} ms, p99 {added['llmsched']['p99_ms']:+.3f} ms; "
          + "; ".join(f"{TITLES[p]} p50 {added[p]['p50_ms']:+.3f} ms" for p in POLICIES)
          + f". Bar p50 ≤ 1 ms: {_verdict(bars['added_p50_le_1ms'])}")
    for c in plan.many_connections:
        r = summary["throughput_ratio"][f"c{c}"]
        print(f"  → throughput at {c} connections: llmsched {r['llmsched_rps']:,.0f} req/s; "
              f"llmsched / vllm-router = {r['vs_vr-rr']:.2f} (round_robin), "
              f"{r['vs_vr-p2c']:.2f} (power_of_two); vs the better one {r['vs_best']:.2f} "
              f"(rounds {r['per_round_vs_best']}). Bar ≥ 0.5: "
              f"{_verdict(bars[f'throughput_c{c}_ge_0.5x_vllm_router'])}")
    for c in plan.stream_connections:
        s = summary["stream_vs_direct"][f"c{c}"]
        gw = s["llmsched"]
        print(f"  → streaming, {c} connection{'s' if c > 1 else ''}: gap through llmsched / "
              f"direct p50 ×{gw['gap_p50_ms']:.3f}, p99 ×{gw['gap_p99_ms']:.3f} (vllm-router "
              f"rr ×{s['vr-rr']['gap_p50_ms']:.3f} / ×{s['vr-rr']['gap_p99_ms']:.3f}); first "
              f"chunk +{gw['added_ttfe_p50_ms']:.3f} ms. Bar within 10 %: p50 "
              f"{_verdict(bars[f'stream_c{c}_gap_p50_within_10pct'])}, p99 "
              f"{_verdict(bars[f'stream_c{c}_gap_p99_within_10pct'])}")


# --------------------------------------------------------------------------- layer workers


def run_layer_server(kind: str, port: int, upstreams: list[str]) -> int:
    """A bare ASGI app served like the API: a constant answer, or the gateway's relay alone."""
    import itertools

    import uvicorn

    from services.api.gateway.upstream import Upstream
    from shared.http_server import QuietServer, bind_socket

    answer = Backend(name="const", chunks=CHUNKS, gap_s=GAP_MS / 1000).chat
    targets = itertools.cycle(f"{url}/v1/chat/completions" for url in upstreams)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(answer)).encode())]

    async def serve() -> None:
        upstream = Upstream()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            if kind == "asgi-const":
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": answer})
                return
            up = await upstream.open(next(targets), body,
                                     {"content-type": "application/json"}, 60.0)
            await send({"type": "http.response.start", "status": up.status,
                        "headers": up.headers})
            if up.first:
                await send({"type": "http.response.body", "body": up.first, "more_body": True})
            async for chunk in up.rest():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            up.close()

        sock = bind_socket("127.0.0.1", port)
        server = QuietServer(uvicorn.Config(app, log_config=None, log_level="warning",
                                            access_log=False, lifespan="off",
                                            timeout_keep_alive=30))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        try:
            await server.serve(sockets=[sock])
        finally:
            await upstream.close()

    run_fast(serve())
    return 0


def versions(router_venv: Path) -> dict[str, str]:
    out = {}
    for dist in ("uvicorn", "uvloop", "httptools", "aiohttp", "nats-py", "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    out["vllm-router"] = vllm_router_version(router_venv)
    wrk = shutil.which("wrk")
    if wrk:
        probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        out["wrk"] = (probe.stdout + probe.stderr).split("\n", 1)[0].strip()
    return out


def uptime() -> str:
    probe = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return probe.stdout.strip() or " ".join(f"{x:.2f}" for x in os.getloadavg())


def _raise_on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmark(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.tool == "wrk" and not shutil.which("wrk"):
        raise BenchError("--tool wrk: wrk is not installed (apt-get install -y wrk)")
    router_exe = ensure_vllm_router(args.peers_venv)
    started = datetime.now()
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full", "cpus": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "uptime_before": uptime(), "throughput_tool": args.tool,
        "backends": {"count": len(BACKENDS), "chunks": CHUNKS, "gap_ms": GAP_MS},
        "gateway_max_ongoing": args.max_ongoing, "gateway_decide": args.decide,
        "api_processes": args.api_processes,
        "plan": plan.__dict__,
        "versions": versions(args.peers_venv), "command": " ".join(sys.argv)}
    print(f"uptime: {meta['uptime_before']}", flush=True)
    with running_stack(args.keep_logs, router_exe, args.max_ongoing, args.decide,
                       args.api_processes) as stack:
        print("Waiting for every path to answer...", flush=True)
        runs = run_fast(measure(stack, plan, args.tool, not args.no_layers))
    meta["uptime_after"] = uptime()
    summary = summarize(runs, plan)
    print_report(meta, summary, plan)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"gateway-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    print(f"\nresults written to {out.relative_to(REPO)} ({time.monotonic() - args.t0:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmsched gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="one round, shorter runs")
    parser.add_argument("--tool", choices=("loadgen", "wrk"), default="loadgen",
                        help="load tool of the throughput runs (latency and streaming runs "
                        "always use loadgen; default loadgen)")
    parser.add_argument("--max-ongoing", type=int, default=1024,
                        help="gateway.max_ongoing_requests of the API (default 1024, above "
                        "the 128 connections)")
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV,
                        help="venv holding vllm-router (installed there if missing)")
    parser.add_argument("--no-layers", action="store_true",
                        help="skip the runs that split the API's CPU per request into layers")
    parser.add_argument("--keep-logs", action="store_true", help="keep the child logs")
    parser.add_argument("--decide", choices=("local", "scheduler"), default="local",
                        help="the API's gateway.decide: the decision in the API process (the "
                             "product's default), or a NATS route call to the scheduler")
    parser.add_argument("--api-processes", type=int, default=1,
                        help="API processes accepting on one socket, as `llmsched up` runs "
                             "them (it starts 2)")
    worker = parser.add_argument_group("internal (child processes)")
    worker.add_argument("--worker", choices=("asgi-const", "asgi-relay"), help=argparse.SUPPRESS)
    worker.add_argument("--port", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--upstreams", nargs="+", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.t0 = time.monotonic()
    if args.worker:
        return run_layer_server(args.worker, args.port, args.upstreams)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        return run_benchmark(args)
    except BenchError as err:
        print(f"gateway_bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway_bench: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
