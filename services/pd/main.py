"""``llmsched pd --config scheduler_config.json``: the seed's PD router, as llmsched services.

It writes the llmsched config of one PD pool from the seed's file, starts embedded NATS and
Valkey unless NATS_URL / REDIS_URL name servers (as ``llmsched up`` does), and runs the
scheduler, the collector (membership, health checks) and the API (OpenAI gateway and PD admin
API) as three child processes whose logs share this terminal. Children, not one event loop:
measured (bench/README.md, PD benchmark), the gateway on the loop that also scrapes metrics,
checks health and schedules answered several times slower under concurrency. A child that
exits stops the others and ``llmsched pd`` exits 1, for the operator's supervisor to restart;
a deployment that wants replicas runs ``llmsched api/scheduler/collector`` on the generated
config instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
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
SERVICES = ("scheduler", "collector", "api")
CHILD_POLL_S = 0.5
STOP_TIMEOUT_S = 20.0


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
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        if "NATS_URL" not in env:
            servers.append(nats_server(workdir=str(Path(args.run_dir).resolve())).start())
            env["NATS_URL"] = servers[-1].url
        if "REDIS_URL" not in env:
            servers.append(valkey_server(workdir=str(Path(args.run_dir).resolve())).start())
            env["REDIS_URL"] = servers[-1].url
        return run_children(loaded, env, model)
    except EmbeddedServerError as err:
        print(f"llmsched pd: {err}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(servers):
            server.stop()


def run_children(loaded: LoadedConfig, env: dict[str, str], model: str) -> int:
    """Scheduler, collector and API until SIGINT/SIGTERM (0) or until one of them exits (1)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for name in SERVICES:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "services", name, "--config", loaded.path], env=env,
                start_new_session=True)  # Ctrl-C reaches this process, which stops them
        announced = False
        g = loaded.config.global_
        api = f"http://{url_host(g.api_host)}:{g.api_port}"
        pool = next(p.pd_pool for p in loaded.config.pools if p.pd_pool is not None)
        while not stop.wait(CHILD_POLL_S):
            gone = [(n, c.returncode) for n, c in children.items() if c.poll() is not None]
            if gone:
                log.error("%s exited with code %s; stopping the others", *gone[0])
                code = 1
                break
            if not announced and _healthy(api):
                announced = True
                log.info("PD router for model %r ready: OpenAI API %s/v1, admin API "
                         "%s/admin/pd/%s/instances (config %s)", model, api, api, pool,
                         loaded.path)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in children.items():
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs; killed", name, STOP_TIMEOUT_S)
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _healthy(api: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(api + "/health", timeout=1.0).status_code == 200
    return False
