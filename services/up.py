"""``llmsched up``: the whole system on one machine, on the embedded default."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from shared.embedded import EmbeddedServer, EmbeddedServerError, nats_server, valkey_server
from shared.http_server import free_port

DEMO_POOL = "demo-pool"
DEMO_F5_PASSWORD_ENV = "LLMSCHED_DEMO_F5_PASSWORD"
DEMO_MODEL = "demo-model"
DEMO_SPEEDS = (0.5, 1.0, 2.0)


def _start_demo_instances(worker: str) -> list[str]:
    """Three simulated vLLM engines of mixed speeds, started through the worker's API."""
    urls: list[str] = []
    for i, speed in enumerate(DEMO_SPEEDS):
        spec = {"alias": DEMO_MODEL, "model_name": "llama-3.1-8b-sim", "engine": "vllm",
                "max_num_seqs": 8, "speed": speed, "add_replica": i > 0}
        request = urllib.request.Request(
            f"{worker}/instances/start", data=json.dumps(spec).encode(), method="POST",
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            urls.append(str(json.loads(resp.read())["url"]).rstrip("/"))
    return urls


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def demo_config(api_port: int, f5_port: int) -> dict[str, Any]:
    """The embedded default: one F5 pool of three simulated engines."""
    return {
        "global": {"interval": 2, "api_port": api_port, "api_host": "127.0.0.1",
                   "log_level": "INFO", "select_timeout_ms": 250},
        "f5": {"host": "127.0.0.1", "port": f5_port, "scheme": "http", "verify": False,
               "username": "admin", "password_env": DEMO_F5_PASSWORD_ENV},
        "scheduler": {"pool_fetch_interval": 5, "metrics_fetch_interval": 1000},
        "modes": [{"name": "s1", "w_a": 0.8, "w_b": 0.2}],
        "pools": [{
            "name": DEMO_POOL, "partition": "Common", "engine_type": "vllm",
            "metrics": {"schema": "http", "path": "/metrics", "timeout": 2},
            "fallback": {"pool_fallback": False, "member_running_req_threshold": 20.0,
                         "member_waiting_queue_threshold": 15.0},
        }],
    }


class Fleet:
    """Child processes started in order and stopped in reverse order."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.servers: list[EmbeddedServer] = []

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.children.append((name, proc))
        return proc

    def service(self, name: str, config: Path, label: str | None = None) -> None:
        self.spawn(label or name, [sys.executable, "-m", "services", name, "--config",
                                   str(config)])

    def check(self) -> str | None:
        """Name of a child that died, if any."""
        for name, proc in self.children:
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in reversed(self.servers):
            server.stop()


def _wait_http(url: str, timeout_s: float, fleet: Fleet) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = fleet.check()
        if dead:
            print(f"llmsched up: {dead} exited; see {fleet.log_dir / (dead + '.log')}",
                  file=sys.stderr)
            return False
        with (contextlib.suppress(urllib.error.URLError, OSError, ValueError),
              urllib.request.urlopen(url, timeout=1) as resp):
            if resp.status == 200:
                return True
        time.sleep(0.2)
    return False


def run_up(config: str | None, run_dir: str, api_port: int | None, schedulers: int) -> int:
    """Start everything, print the URLs, and stop everything on Ctrl-C."""
    run = Path(run_dir).resolve()
    log_dir = run / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault(DEMO_F5_PASSWORD_ENV, "demo-password")
    env["PYTHONUNBUFFERED"] = "1"
    fleet = Fleet(log_dir, env)
    stopping = {"now": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return _start(fleet, run, env, config, api_port, schedulers, stopping)
    except EmbeddedServerError as err:
        print(f"llmsched up: {err}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping all processes...", file=sys.stderr)
        fleet.stop()
        print("Stopped.", file=sys.stderr)


def _start(fleet: Fleet, run: Path, env: dict[str, str], config: str | None,
           api_port: int | None, schedulers: int, stopping: dict[str, bool]) -> int:
    if "NATS_URL" not in env:
        nats = nats_server(workdir=str(run)).start()
        fleet.servers.append(nats)
        env["NATS_URL"] = nats.url
    if "REDIS_URL" not in env:
        valkey = valkey_server(workdir=str(run)).start()
        fleet.servers.append(valkey)
        env["REDIS_URL"] = valkey.url
    demo_lines: list[str] = []
    if config is None:
        f5_port = free_port()
        port = api_port or 8080
        if not _port_free(port):
            chosen = free_port()
            print(f"Port {port} is busy; the API uses {chosen} instead", file=sys.stderr)
            port = chosen
        worker_port, load_port = free_port(), free_port()
        fleet.spawn("worker", [sys.executable, "-m", "services", "worker", "--port",
                               str(worker_port), "--manager-url", f"http://127.0.0.1:{port}",
                               "--worker-id", "demo-worker", "--heartbeat-interval", "2"])
        worker = f"http://127.0.0.1:{worker_port}"
        if not _wait_http(f"{worker}/health", 60, fleet):
            return 1
        engine_urls = _start_demo_instances(worker)
        members = [u.split("//", 1)[1] for u in engine_urls]
        fleet.spawn("f5-emulator", [sys.executable, "-m", "services.doubles.f5_emulator",
                                    "--port", str(f5_port),
                                    "--pool", f"Common/{DEMO_POOL}={','.join(members)}",
                                    "--user", "admin", "--password-env", DEMO_F5_PASSWORD_ENV])
        fleet.spawn("demo-load", [sys.executable, "-m", "services.doubles.demo_load",
                                  "--targets", ",".join(engine_urls), "--model", DEMO_MODEL,
                                  "--port", str(load_port)])
        config_path = run / "config.yaml"
        config_path.write_text(
            "# llmsched demo config, written by `llmsched up`. Edit it: changes apply within\n"
            "# global.interval seconds (try pools[0].fallback.pool_fallback: true).\n"
            + yaml.safe_dump(demo_config(port, f5_port), sort_keys=False))
        body = json.dumps({"pool_name": DEMO_POOL, "partition": "Common", "members": members})
        api = f"http://127.0.0.1:{port}"
        demo_lines = [
            f"  F5 emulator:        http://127.0.0.1:{f5_port}  (admin / ${DEMO_F5_PASSWORD_ENV})",
            f"  Worker:             {worker}/instances  (3 simulated vLLM engines, speeds "
            + ", ".join(str(s) for s in DEMO_SPEEDS) + ")",
            "  Engines:            " + "  ".join(engine_urls),
            f"  Demo traffic:       http://127.0.0.1:{load_port}/_control",
            "",
            "Try:",
            f"  curl -s -X POST {api}/scheduler/select -H 'content-type: application/json' "
            f"-d '{body}'",
            f"  curl -s -X POST '{api}/pools/{DEMO_POOL}/Common/analyze?iterations=1000' "
            f"-H 'content-type: application/json' -d '{body}'",
            f"  curl -s {api}/pools/{DEMO_POOL}/Common/status",
            "  # pile requests onto engine 1 (its waiting queue rises, its share drops):",
            f"  curl -s -X PUT http://127.0.0.1:{load_port}/_control "
            "-H 'content-type: application/json' -d '{\"target\": 0, \"concurrency\": 40}'",
            "  # back to the automatic wave: -d '{\"target\": 0, \"auto\": true}'",
            f"  curl -s {api}/admin/workers",
        ]
    else:
        config_path = Path(config).resolve()
        from shared.config import ConfigError, load_config

        try:
            port = load_config(config_path).config.global_.api_port
        except ConfigError as err:
            print(f"llmsched up: {err}", file=sys.stderr)
            return 2
    for i in range(max(1, schedulers)):
        fleet.service("scheduler", config_path, f"scheduler-{i + 1}")
    fleet.service("collector", config_path)
    fleet.service("autoscaler", config_path)
    fleet.service("api", config_path)
    api = f"http://127.0.0.1:{port}"
    if not _wait_http(f"{api}/health", 60, fleet):
        print(f"llmsched up: the API did not become healthy; logs in {fleet.log_dir}",
              file=sys.stderr)
        return 1
    lines = [
        "",
        "llmsched is up.",
        f"  API:                {api}   (docs: {api}/docs)",
        f"  Health:             {api}/health",
        f"  NATS:               {env['NATS_URL']}",
        f"  Redis (Valkey):     {env['REDIS_URL']}",
        f"  Config (hot-reloaded): {config_path}",
        f"  Logs:               {fleet.log_dir}/",
        *demo_lines,
        "",
        "Press Ctrl-C to stop everything.",
    ]
    print("\n".join(lines), flush=True)
    while not stopping["now"]:
        dead = fleet.check()
        if dead:
            print(f"llmsched up: {dead} exited unexpectedly; see "
                  f"{fleet.log_dir / (dead + '.log')}", file=sys.stderr)
            return 1
        time.sleep(0.3)
    return 0
