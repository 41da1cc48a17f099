"""``llmsched pd --config scheduler_config.json``: the seed's PD router, as llmsched services.

One process: the scheduler, the collector (membership, health checks) and the API
(OpenAI gateway and the PD admin API) run in-process on one event loop, over embedded
NATS and Valkey unless NATS_URL / REDIS_URL name servers. One process is the simplest
honest design for one PD pool: the same service code as a deployment runs (routing,
in-flight counts, health, retries), one Ctrl-C stops it, and a deployment that wants
replicas runs ``llmsched api/scheduler/collector`` on the generated config instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from services.pd.seed import SeedConfig, check_seed, load_seed, seed_pool
from shared.config import ConfigError, LoadedConfig, load_config
from shared.embedded import EmbeddedServer, EmbeddedServerError, nats_server, valkey_server
from shared.logs import setup_logging
from shared.members import url_host

log = logging.getLogger("llmsched.pd")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DISCOVER_TIMEOUT_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmsched pd",
        description="Prefill/decode disaggregated router over the seed's JSON config: an "
                    "OpenAI API that sends each request to a prefill, then a decode instance.")
    p.add_argument("--config", required=True, help="the seed's scheduler_config.json")
    p.add_argument("--interval", type=_positive, default=None, metavar="S",
                   help="health check interval, seconds (overrides health_check_interval)")
    p.add_argument("--log-level", type=str.upper, choices=LEVELS, default="INFO")
    p.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    p.add_argument("--model", default=None,
                   help="the model name clients ask for (default: what the first instance "
                        "that answers serves, from its /v1/models)")
    p.add_argument("--served-model-name", default=None,
                   help="the name the engines serve, when clients use another (--model)")
    p.add_argument("--pool", default="pd", help="the PD pool's name in llmsched (default pd)")
    p.add_argument("--prefix", default="llmsched-pd",
                   help="NATS subject / Redis key prefix (default llmsched-pd)")
    p.add_argument("--run-dir", default=".llmsched-pd",
                   help="where the generated llmsched config and embedded servers' files go")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def discover_model(seed: SeedConfig) -> str | None:
    """The model the first instance that answers ``GET /v1/models`` serves."""
    for inst in [*seed.prefill_instances, *seed.decode_instances]:
        url = f"http://{url_host(inst.host)}:{inst.port}/v1/models"
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            data = httpx.get(url, timeout=DISCOVER_TIMEOUT_S).json()["data"]
            return str(data[0]["id"])
    return None


def write_config(args: argparse.Namespace, seed: SeedConfig, model: str) -> Path:
    """The llmsched config of this PD pool, written to ``<run-dir>/config.yaml``."""
    pool = seed_pool(seed, pool=args.pool, model=model, served_model=args.served_model_name)
    if args.interval is not None:
        pool["pd"]["health_check_interval"] = args.interval
    doc = {"global": {"api_host": args.host, "api_port": args.port, "prefix": args.prefix,
                      "log_level": args.log_level, "interval": 5},
           "pools": [pool]}
    check_seed(seed, doc)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text("# Written by `llmsched pd` from " + str(Path(args.config).resolve())
                    + "; rewritten at every start.\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llmsched pd``."""
    args = build_parser().parse_args(argv)
    try:
        seed, unknown = load_seed(args.config)
    except ConfigError as err:
        print(f"llmsched pd: {args.config}: {err}", file=sys.stderr)
        return 2
    setup_logging("pd", args.log_level)
    if unknown:
        log.warning("%s: keys the seed does not define, ignored: %s", args.config,
                    ", ".join(unknown))
    model = args.model or discover_model(seed) or args.pool
    try:
        loaded = load_config(write_config(args, seed, model))
    except ConfigError as err:
        print(f"llmsched pd: {args.config}: {err}", file=sys.stderr)
        return 2
    servers: list[EmbeddedServer] = []
    env = dict(os.environ)
    try:
        if "NATS_URL" not in env:
            servers.append(nats_server(workdir=str(Path(args.run_dir).resolve())).start())
            env["NATS_URL"] = servers[-1].url
        if "REDIS_URL" not in env:
            servers.append(valkey_server(workdir=str(Path(args.run_dir).resolve())).start())
            env["REDIS_URL"] = servers[-1].url
    except EmbeddedServerError as err:
        print(f"llmsched pd: {err}", file=sys.stderr)
        for server in servers:
            server.stop()
        return 1
    try:
        asyncio.run(serve(loaded, env["NATS_URL"], env["REDIS_URL"], model))
    except KeyboardInterrupt:
        pass
    finally:
        for server in reversed(servers):
            server.stop()
    return 0


async def serve(loaded: LoadedConfig, nats_url: str, redis_url: str, model: str) -> None:
    """Scheduler, collector and API on this loop until SIGINT/SIGTERM."""
    from services.api.main import serve as serve_api
    from services.collector.main import serve as serve_collector
    from services.scheduler.main import serve as serve_scheduler

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(serve_scheduler(loaded, stop, nats_url=nats_url,
                                                 redis_url=redis_url), name="scheduler"),
             asyncio.create_task(serve_collector(loaded, stop, nats_url=nats_url,
                                                 redis_url=redis_url), name="collector"),
             asyncio.create_task(serve_api(loaded, stop, nats_url=nats_url,
                                           redis_url=redis_url), name="api")]
    g = loaded.config.global_
    pool = next(p for p in loaded.config.pools if p.pd_pool is not None)
    api = f"http://{url_host(g.api_host)}:{g.api_port}"
    log.info("PD router for model %r: OpenAI API %s/v1, admin API %s/admin/pd/%s/instances "
             "(config %s)", model, api, api, pool.pd_pool, loaded.path)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopper and task.exception() is not None:
            log.error("%s failed: %s", task.get_name(), task.exception())
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
