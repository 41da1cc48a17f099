"""``llmsched up``: the whole system on one machine, kept running until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.up.config_file import ConfigChoice, ConfigFileError, demo_config_file, own_config
from services.up.demo import (
    DEMO_F5_PASSWORD_ENV,
    DEMO_MODEL,
    DEMO_PARTITION,
    DEMO_POOL,
    DEMO_SPEEDS,
    gateway_lines,
    instance_ports,
    register_aliases,
    start_demo_instances,
    try_lines,
)
from services.up.ports import PortChoice, PortError, bind_api, check_free, display_host
from services.up.supervisor import ChildSpec, Supervisor
from shared.auth import ADMIN_KEY_ENV
from shared.config import GlobalConfig
from shared.embedded import EmbeddedServer, EmbeddedServerError, nats_server, valkey_server
from shared.http_server import free_port

START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class UpOptions:
    """What the ``llmsched up`` command line decides."""

    config: str | None = None
    run_dir: str = ".llmsched"
    api_port: int | None = None
    """A port the operator named: used, or ``up`` fails with exit code 2."""
    schedulers: int = 2
    api_processes: int = 2
    reset_config: bool = False
    default_api_port: int = GlobalConfig().api_port
    """The unnamed default; it moves to a free port when busy."""


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_up(options: UpOptions) -> int:
    """Check config and ports, start everything, supervise it until Ctrl-C/SIGTERM."""
    run = Path(options.run_dir).resolve()
    (run / "logs").mkdir(parents=True, exist_ok=True)
    try:
        choice = (own_config(options.config, options.api_port, options.default_api_port)
                  if options.config is not None else
                  demo_config_file(run, options.reset_config, options.api_port,
                                   options.default_api_port))
        if choice.f5_emulator_port is not None:
            check_free("127.0.0.1", PortChoice(choice.f5_emulator_port,
                                               f"f5.port in {choice.path}, the F5 emulator's"))
        sock, moved = bind_api(choice.loaded.config.global_.api_host, choice.api_port)
    except (ConfigFileError, PortError) as err:
        say(f"llmsched up: {err}")
        return 2
    if moved:
        say(f"llmsched up: {moved}")
    up = Up(options, run, choice, sock, moved)
    signal.signal(signal.SIGINT, up.request_stop)
    signal.signal(signal.SIGTERM, up.request_stop)
    try:
        return up.start_and_supervise()
    except EmbeddedServerError as err:
        say(f"llmsched up: {err}")
        return 1
    finally:
        say("\nStopping all processes...")
        up.stop()
        say("Stopped.")


class Up:
    """One run: embedded servers, the demo fleet and the services, supervised."""

    def __init__(self, options: UpOptions, run: Path, choice: ConfigChoice,
                 api_socket: socket.socket, moved: str | None) -> None:
        self.options = options
        self.run = run
        self.choice = choice
        self.api_socket = api_socket
        self.moved = moved
        self.env = dict(os.environ)
        self.env.setdefault(DEMO_F5_PASSWORD_ENV, "demo-password")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.admin_key = self.env.get(ADMIN_KEY_ENV) or None
        self.supervisor = Supervisor(run / "logs", self.env, run / "pids.json", say)
        self.servers: list[EmbeddedServer] = []
        self.stop_requested = threading.Event()
        self.engines_lock = threading.Lock()
        host, port = api_socket.getsockname()[:2]
        self.api = f"http://{display_host(str(host))}:{port}"
        self.engine_urls: list[str] = []
        self.load_port = 0

    def request_stop(self, _sig: int, _frame: object) -> None:
        self.stop_requested.set()

    def stop(self) -> None:
        self.supervisor.stop()
        for server in reversed(self.servers):
            server.stop()
        self.api_socket.close()

    def start_and_supervise(self) -> int:
        self._start_servers()
        demo_lines: list[str] = []
        if self.options.config is None:
            lines = self._start_demo()
            if lines is None:
                return 0 if self.stop_requested.is_set() else 1
            demo_lines = lines
        self._start_services()
        if not self._wait_http(f"{self.api}/health", START_TIMEOUT_S):
            if self.stop_requested.is_set():
                return 0
            say(f"llmsched up: the API did not become healthy; logs in {self.run / 'logs'}")
            return 1
        if self.options.config is None:
            try:
                aliases = register_aliases(self.api, self.admin_key)
            except (urllib.error.URLError, OSError, ValueError) as err:
                say(f"llmsched up: registering the demo aliases failed: {_why(err)}")
                return 1
            self._start_demo_load(aliases)
            key_env = ADMIN_KEY_ENV if self.admin_key else None
            demo_lines += ["", *gateway_lines(self.api, aliases, key_env)]
        print("\n".join(self._summary(demo_lines)), flush=True)
        while not self.stop_requested.is_set():
            self.supervisor.poll()
            self.stop_requested.wait(0.2)
        return 0

    def _start_servers(self) -> None:
        if "NATS_URL" not in self.env:
            nats = nats_server(workdir=str(self.run)).start()
            self.servers.append(nats)
            self.env["NATS_URL"] = nats.url
        if "REDIS_URL" not in self.env:
            valkey = valkey_server(workdir=str(self.run)).start()
            self.servers.append(valkey)
            self.env["REDIS_URL"] = valkey.url
        self.supervisor.servers = {s.kind: s.proc.pid for s in self.servers
                                   if s.proc is not None}

    def _start_services(self) -> None:
        config = str(self.choice.path)
        service = [sys.executable, "-m", "services"]
        for i in range(max(1, self.options.schedulers)):
            self.supervisor.start(ChildSpec(f"scheduler-{i + 1}",
                                            [*service, "scheduler", "--config", config]))
        for name in ("collector", "autoscaler"):
            self.supervisor.start(ChildSpec(name, [*service, name, "--config", config]))
        fd = self.api_socket.fileno()
        count = max(1, self.options.api_processes)
        for i in range(count):
            # Every API process accepts on the socket bound here: while one restarts, the
            # others (or the kernel's backlog) hold new connections instead of refusing them.
            self.supervisor.start(ChildSpec(
                "api" if count == 1 else f"api-{i + 1}",
                [*service, "api", "--config", config, "--listen-fd", str(fd)], pass_fds=(fd,)))

    def _start_demo(self) -> list[str] | None:
        """Worker, its three engines, the F5 emulator and demo traffic; None if that failed."""
        worker_port, load_port = free_port(), free_port()
        engine_ports = [free_port() for _ in DEMO_SPEEDS]
        worker = f"http://127.0.0.1:{worker_port}"
        self.supervisor.start(ChildSpec("worker", [
            sys.executable, "-m", "services", "worker", "--port", str(worker_port),
            "--manager-url", self.api, "--worker-id", "demo-worker",
            "--heartbeat-interval", "2", "--log-dir", str(self.run / "logs" / "engines")],
            after_restart=lambda: self._restart_engines(worker, engine_ports)))
        if not self._wait_http(f"{worker}/health", START_TIMEOUT_S):
            if not self.stop_requested.is_set():
                say(f"llmsched up: the worker did not become healthy; see "
                    f"{self.supervisor.child('worker').log_path}")
            return None
        try:
            engine_urls = start_demo_instances(worker, engine_ports, self.admin_key)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
            say(f"llmsched up: the worker did not start the demo engines: {_why(err)}")
            return None
        members = [u.split("//", 1)[1] for u in engine_urls]
        f5_port = self.choice.f5_emulator_port
        if f5_port is not None:
            self.supervisor.start(ChildSpec("f5-emulator", [
                sys.executable, "-m", "services.doubles.f5_emulator", "--port", str(f5_port),
                "--pool", f"{DEMO_PARTITION}/{DEMO_POOL}={','.join(members)}",
                "--user", "admin", "--password-env", DEMO_F5_PASSWORD_ENV]))
            f5_line = f"http://127.0.0.1:{f5_port}  (admin / ${DEMO_F5_PASSWORD_ENV})"
        else:
            f5_line = "not started (the config's f5 section does not point at this machine)"
        self.engine_urls, self.load_port = engine_urls, load_port
        key_env = ADMIN_KEY_ENV if self.admin_key else None
        return [
            f"  F5 emulator:        {f5_line}",
            f"  Worker:             {worker}/instances  (3 simulated vLLM engines, speeds "
            + ", ".join(str(s) for s in DEMO_SPEEDS) + ")",
            "  Engines:            " + "  ".join(engine_urls),
            f"  Demo traffic:       http://127.0.0.1:{load_port}/_control",
            "",
            *try_lines(self.api, members, f"http://127.0.0.1:{load_port}/_control", key_env),
        ]

    def _start_demo_load(self, aliases: list[str]) -> None:
        """Traffic to the F5 pool's engines, and through the gateway to the aliases."""
        self.supervisor.start(ChildSpec("demo-load", [
            sys.executable, "-m", "services.doubles.demo_load", "--targets",
            ",".join(self.engine_urls), "--model", DEMO_MODEL, "--port", str(self.load_port),
            "--gateway", self.api, "--aliases", ",".join(aliases)]))

    def _restart_engines(self, worker: str, ports: list[int]) -> None:
        """A restarted worker has no engines: start the demo's again on the same ports (the
        F5 pool's members). The autoscaler may already have started replicas of the alias on
        other ports; those stay, and only the demo ports nobody serves are started."""
        if not self._wait_http(f"{worker}/health", START_TIMEOUT_S, supervise=False):
            return
        try:
            with self.engines_lock:  # a worker restarted twice in a row: start them once
                missing = set(ports) - instance_ports(worker, self.admin_key)
                if not missing:
                    return
                start_demo_instances(worker, ports, self.admin_key, only=missing,
                                     add_replica=True)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
            say(f"llmsched up: the restarted worker did not start the demo engines: {_why(err)}")
            return
        say(f"llmsched up: demo engines started again on the restarted worker (ports "
            f"{', '.join(map(str, ports))})")

    def _wait_http(self, url: str, timeout_s: float, *, supervise: bool = True) -> bool:
        """Poll ``url`` until it answers 200 (children keep being supervised meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.stop_requested.is_set() or self.supervisor.stopping.is_set():
                return False
            if supervise:
                self.supervisor.poll()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self.stop_requested.wait(0.2)
        return False

    def _summary(self, demo_lines: list[str]) -> list[str]:
        api = self.api
        return [
            "",
            "llmsched is up.",
            f"  API:                {api}   (docs: {api}/docs; "
            f"{max(1, self.options.api_processes)} process(es) on one socket)",
            f"  Health:             {api}/health",
            f"  NATS:               {self.env['NATS_URL']}",
            f"  Redis (Valkey):     {self.env['REDIS_URL']}",
            f"  Config:             {self.choice.note}",
            f"  Logs:               {self.run / 'logs'}/",
            f"  PIDs:               {self.supervisor.pids_path}  (a child that exits is "
            "restarted)",
            *([f"  Note:               {self.moved}"] if self.moved else []),
            *demo_lines,
            "",
            "Press Ctrl-C to stop everything.",
        ]


def _why(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.read().decode(errors='replace')[:200]}"
    return str(err)
