"""PD benchmark: llmsched PD against vllm-router PD mode, and PD against aggregated serving.

One simulated fleet (four ``llmsched engine-sim`` processes of unequal speeds, role ``both`` so
the same engines serve every mode; prefix caching off so a replayed trace finds nothing cached)
and one seeded trace (Poisson arrivals, prompt and output lengths drawn per request, every
request streamed with usage) go through, in turn:

- **llmsched-pd**: ``llmsched pd`` over the seed's JSON (engines 1-2 prefill, 3-4 decode;
  ``least_load`` per role);
- **vllm-router-pd**: ``vllm-router --vllm-pd-disaggregation`` on the same split
  (``power_of_two``, its load-aware policy; ``--pd-policy`` to change);
- **llmsched-agg** and **vllm-router-agg**: the four engines as ordinary instances (llmsched's
  gateway with ``least_load``; vllm-router ``--worker-urls`` with ``power_of_two``).

Per path: requests ok / failed, TTFT p50 and p99 (first content token at the client), the
inter-token gap mean and p99 (between content events), output tokens per second, and whether the
decodes pulled the prompt's KV (the engines' ``external_kv_transfer`` prompt tokens). Engines are
restarted between paths. Run ``.venv/bin/python bench/pd_bench.py [--requests N] [--rate R]``;
results are printed and written to ``bench/results/pd-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from select_bench import BenchError, Child  # bench/ is sys.path[0] when run as a script

from shared.http_server import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_VENV = Path("/tmp/peers")
SPEEDS = (1.0, 0.5, 1.0, 0.5)
"""Engines 1-2 prefill, 3-4 decode in PD mode: one fast and one slow in each role."""
PATHS = ("llmsched-pd", "vllm-router-pd", "llmsched-agg", "vllm-router-agg")
WORDS = [f"w{i}" for i in range(5000)]


@dataclass(frozen=True)
class Req:
    at: float
    prompt_words: int
    max_tokens: int
    seed: int


@dataclass
class Result:
    ok: bool
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    started: float = 0.0
    ended: float = 0.0
    error: str = ""


def trace(n: int, rate: float, seed: int, prompt: tuple[int, int],
          output: tuple[int, int]) -> list[Req]:
    """``n`` requests, Poisson arrivals at ``rate`` per second, lengths uniform in ranges."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for i in range(n):
        at += rng.expovariate(rate)
        out.append(Req(at, rng.randint(*prompt), rng.randint(*output), seed * 100003 + i))
    return out


def body(req: Req) -> dict[str, Any]:
    rng = random.Random(req.seed)
    text = " ".join(rng.choice(WORDS) for _ in range(req.prompt_words))
    return {"model": "tiny", "messages": [{"role": "user", "content": text}],
            "max_tokens": req.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}


async def one(session: aiohttp.ClientSession, url: str, req: Req) -> Result:
    result = Result(ok=False, started=time.perf_counter())
    last: float | None = None
    try:
        async with session.post(url + "/v1/chat/completions", json=body(req)) as r:
            if r.status != 200:
                result.error = f"{r.status} {(await r.text())[:200]}"
                return result
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                now = time.perf_counter()
                if event.get("usage"):
                    result.tokens = int(event["usage"].get("completion_tokens") or 0)
                choices = event.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    if result.ttft is None:
                        result.ttft = now - result.started
                    elif last is not None:
                        result.gaps.append(now - last)
                    last = now
        result.ok = result.ttft is not None
        if not result.ok:
            result.error = "no content"
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        result.error = f"{type(err).__name__}: {err}"
    finally:
        result.ended = time.perf_counter()
    return result


async def replay(url: str, reqs: list[Req]) -> list[Result]:
    """Send every request at its arrival time (open loop); wait for all answers."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def at(req: Req) -> Result:
            await asyncio.sleep(max(0.0, start + req.at - time.perf_counter()))
            return await one(session, url, req)
        return list(await asyncio.gather(*(at(r) for r in reqs)))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(results: list[Result]) -> dict[str, Any]:
    good = [r for r in results if r.ok]
    ttfts = [r.ttft for r in good if r.ttft is not None]
    gaps = [g for r in good for g in r.gaps]
    span = (max(r.ended for r in results) - min(r.started for r in results)) if results else 0
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error[:120]] = errors.get(r.error[:120], 0) + 1
    return {"requests": len(results), "ok": len(good), "failed": len(results) - len(good),
            "ttft_p50_ms": _ms(pct(ttfts, 0.5)), "ttft_p99_ms": _ms(pct(ttfts, 0.99)),
            "itl_mean_ms": _ms(statistics.fmean(gaps) if gaps else None),
            "itl_p99_ms": _ms(pct(gaps, 0.99)),
            "tokens_per_s": round(sum(r.tokens for r in good) / span, 1) if span else None,
            "errors": errors}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


@dataclass
class Fleet:
    """The engines, the embedded servers, and what each path needs."""

    workdir: Path
    ports: list[int]
    nats_url: str
    redis_url: str
    engines: list[Child] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]


def start_engines(fleet: Fleet, env: dict[str, str]) -> None:
    for child in fleet.engines:
        child.stop()
    fleet.engines = []
    for i, (port, speed) in enumerate(zip(fleet.ports, SPEEDS, strict=True)):
        fleet.engines.append(Child(f"engine-{i + 1}", [
            sys.executable, "-m", "services", "engine-sim", "--port", str(port),
            "--model", "/models/tiny", "--served-model-name", "tiny", "--role", "both",
            "--speed", str(speed), "--seed", str(i + 1), "--no-enable-prefix-caching",
            "--max-model-len", "8192", "--log-level", "WARNING"], fleet.workdir, env))


def kv_pulled(fleet: Fleet) -> float:
    """Prompt tokens the engines took from a KV transfer (sum over the fleet)."""
    total = 0.0
    for url in fleet.urls:
        text = subprocess.run(["curl", "-s", "-m", "5", url + "/metrics"], capture_output=True,
                              text=True, check=False).stdout
        for line in text.splitlines():
            if line.startswith("vllm:prompt_tokens_by_source_total") and \
                    'source="external_kv_transfer"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_ready(url: str, children: list[Child], timeout_s: float = 120) -> None:
    """Until one small request through ``url`` succeeds."""
    probe = Req(0.0, 8, 2, 1)
    deadline = time.monotonic() + timeout_s
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        while time.monotonic() < deadline:
            for child in children:
                child.check()
            result = await one(session, url, probe)
            if result.ok:
                return
            last = result.error
            await asyncio.sleep(1.0)
    raise BenchError(f"{url} never answered: {last}")


def path_children(name: str, fleet: Fleet, env: dict[str, str], router: Path,
                  pd_policy: str) -> tuple[str, list[Child]]:
    """Start the router of path ``name``; its base URL and its processes."""
    work, urls, port = fleet.workdir, fleet.urls, free_port()
    prefix = f"pdb{secrets.token_hex(3)}"
    if name == "llmsched-pd":
        seed = {"strategy": "least_load", "health_check_interval": 5.0,
                "prefill_instances": [{"id": f"p{i}", "host": "127.0.0.1", "port": p}
                                      for i, p in enumerate(fleet.ports[:2])],
                "decode_instances": [{"id": f"d{i}", "host": "127.0.0.1", "port": p}
                                     for i, p in enumerate(fleet.ports[2:])]}
        path = work / "scheduler_config.json"
        path.write_text(json.dumps(seed))
        return f"http://127.0.0.1:{port}", [Child(name, [
            sys.executable, "-m", "services", "pd", "--config", str(path), "--port", str(port),
            "--model", "tiny", "--prefix", prefix, "--run-dir", str(work / "pd"),
            "--log-level", "WARNING"], work, env)]
    if name == "llmsched-agg":
        pool = {"name": "agg", "engine_type": "vllm", "source": "static", "model": "tiny",
                "members": [u.removeprefix("http://") for u in urls]}
        config = work / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "global": {"api_host": "127.0.0.1", "api_port": port, "prefix": prefix,
                       "log_level": "WARNING"},
            "modes": [{"name": "fewest", "type": "least_load"}], "pools": [pool]}))
        return f"http://127.0.0.1:{port}", [
            Child(f"{name}-{svc}", [sys.executable, "-m", "services", svc, "--config",
                                     str(config)], work, env)
            for svc in ("scheduler", "collector", "api")]
    common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
              "--prometheus-port", str(free_port()), "--worker-startup-check-interval", "1"]
    if name == "vllm-router-pd":
        argv = [str(router), *common, "--vllm-pd-disaggregation", "--policy", pd_policy]
        for url in urls[:2]:
            argv += ["--prefill", url]
        for url in urls[2:]:
            argv += ["--decode", url]
    else:
        argv = [str(router), *common, "--worker-urls", *urls, "--policy", pd_policy]
    return f"http://127.0.0.1:{port}", [Child(name, argv, work, env)]


@contextlib.contextmanager
def fleet_servers() -> Iterator[Fleet]:
    from shared.embedded import nats_server, valkey_server

    workdir = Path(tempfile.mkdtemp(prefix="llmsched-pdbench-"))
    nats = nats_server(workdir=str(workdir)).start()
    valkey = valkey_server(workdir=str(workdir)).start()
    fleet = Fleet(workdir, [free_port() for _ in SPEEDS], nats.url, valkey.url)
    try:
        yield fleet
    finally:
        for child in fleet.engines:
            child.stop()
        valkey.stop()
        nats.stop()
        print(f"logs in {workdir}", file=sys.stderr)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    router = args.router_venv / "bin" / "vllm-router"
    if not router.exists():
        raise BenchError(f"{router} is missing (pip install vllm-router into {args.router_venv})")
    reqs = trace(args.requests, args.rate, args.seed, (args.prompt_min, args.prompt_max),
                 (args.output_min, args.output_max))
    out: dict[str, Any] = {"when": datetime.now().isoformat(timespec="seconds"),
                           "uptime_before": uptime(), "args": {k: str(v) for k, v in
                                                               vars(args).items()},
                           "speeds": SPEEDS, "paths": {}}
    with fleet_servers() as fleet:
        env = dict(os.environ, NATS_URL=fleet.nats_url, REDIS_URL=fleet.redis_url,
                   PYTHONUNBUFFERED="1")
        for name in args.paths:
            start_engines(fleet, env)
            url, children = path_children(name, fleet, env, router, args.pd_policy)
            try:
                await wait_ready(url, [*fleet.engines, *children])
                before = kv_pulled(fleet)
                print(f"{name}: {len(reqs)} requests at {args.rate}/s ... ({uptime()})",
                      flush=True)
                results = await replay(url, reqs)
                summary = summarize(results)
                summary["kv_pulled_tokens"] = kv_pulled(fleet) - before
                summary["uptime_after"] = uptime()
                out["paths"][name] = summary
                print(f"  {json.dumps({k: v for k, v in summary.items() if k != 'errors'})}",
                      flush=True)
                if summary["errors"]:
                    print(f"  errors: {summary['errors']}", flush=True)
            finally:
                for child in children:
                    child.stop()
        if not args.keep_logs:
            shutil.rmtree(fleet.workdir, ignore_errors=True)
    return out


def print_table(out: dict[str, Any]) -> None:
    cols = ("ok", "failed", "ttft_p50_ms", "ttft_p99_ms", "itl_mean_ms", "itl_p99_ms",
            "tokens_per_s", "kv_pulled_tokens")
    print("\n| path | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in out["paths"].items():
        print(f"| {name} | " + " | ".join(str(row.get(c)) for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=240)
    p.add_argument("--rate", type=float, default=4.0, help="arrivals per second (Poisson)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prompt-min", type=int, default=200)
    p.add_argument("--prompt-max", type=int, default=1500)
    p.add_argument("--output-min", type=int, default=32)
    p.add_argument("--output-max", type=int, default=256)
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--pd-policy", default="power_of_two",
                   help="vllm-router's policy (both of its paths)")
    p.add_argument("--router-venv", type=Path, default=PEERS_VENV)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    try:
        out = asyncio.run(run(args))
    except BenchError as err:
        print(f"pd_bench: {err}", file=sys.stderr)
        return 1
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"pd-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2))
    print_table(out)
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
