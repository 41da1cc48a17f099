"""Processes of the real-time routing benchmark: the simulated fleet, llmsched, vllm-router.

Every process is a child in its own session with its log in the run's work directory;
each stack is a context manager that stops what it started. CPU seconds are read from
/proc so that each run can say what every process spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from services.enginesim.config import EngineConfig
from shared.http_server import free_port
from shared.promparse import parse_selected

REPO = Path(__file__).resolve().parents[2]
MODEL = "bench-model"
"""The model name the simulated engines serve."""
GREYBOX_ALIAS = "bench-greybox"
"""The alias the gateway serves through the greybox pool."""
GREYBOX_POOL, S1_POOL, PARTITION = "routing-greybox", "routing-s1", "Common"
PEERS_VENV = Path("/tmp/peers")

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
SUCCESS = "vllm:request_success_total"
_SELECTED = frozenset({WAITING, RUNNING, SUCCESS})


class StackError(RuntimeError):
    """A process died or never became ready; the message carries its log tail."""


def proc_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of a process (Linux /proc), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A child process in its own session (Ctrl-C reaches only us; we stop it)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=env, start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise StackError(f"{self.name} exited with code {self.proc.returncode}:\n"
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
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.kill()  # a second Ctrl-C: no more waiting, but nothing left behind
            self.proc.wait(timeout=5)


@dataclass
class Processes:
    """Named children whose CPU a run accounts."""

    workdir: Path
    children: dict[str, Child] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.workdir, env or dict(os.environ, PYTHONUNBUFFERED="1"))
        self.children[name] = child
        self.pids[name] = child.proc.pid
        return child

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

    def stop(self) -> None:
        interrupted = False
        for child in reversed(list(self.children.values())):
            try:
                child.stop()
            except KeyboardInterrupt:
                interrupted = True
                child.proc.kill()
        if interrupted:
            raise KeyboardInterrupt


def raise_priority(pid: int, nice: int) -> int:
    """CPU priority ``nice`` for ``pid``, and for its autogroup (with the kernel's autogroup
    scheduling, a process's nice only counts inside its session's group); returns the
    autogroup's previous nice (0 when there is none), to restore it."""
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    group = Path(f"/proc/{pid}/autogroup")
    old = 0
    with contextlib.suppress(OSError, ValueError):
        old = int(group.read_text().split("nice")[-1])
        group.write_text(str(nice))
    return old


def restore_group_priority(pid: int, nice: int) -> None:
    """Put the autogroup nice of ``pid`` back (its session outlives the benchmark)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


@contextlib.contextmanager
def normal_priority() -> Iterator[None]:
    """Children started inside get the default CPU priority, not the harness's.

    The harness and the simulated engines may run at a raised priority (they stand for
    clients and GPUs on other machines); the routers under test must not inherit it.
    """
    old = os.getpriority(os.PRIO_PROCESS, 0)
    if old == 0:
        yield
        return
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, old)


async def poll(what: str, procs: Processes, check: Callable[[], Awaitable[tuple[bool, str]]],
               timeout_s: float) -> None:
    """Until ``check`` says ready (StackError naming the last answer after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        procs.check()
        try:
            ok, last = await check()
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as err:
            ok, last = False, f"{type(err).__name__}: {err}"
        if ok:
            return
        await asyncio.sleep(0.2)
    raise StackError(f"{what} not ready after {timeout_s:.0f} s ({last})")


async def fetch(session: aiohttp.ClientSession, method: str, url: str,
                body: bytes | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    async with session.request(method, url, data=body,
                               headers={"content-type": "application/json"} if body else None,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        return resp.status, await resp.read()


CHAT_PROBE = json.dumps({"model": MODEL, "max_tokens": 2,
                         "messages": [{"role": "user", "content": "ready?"}]}).encode()


# --------------------------------------------------------------------------- the fleet


def enginesim_argv(engines: Sequence[EngineConfig], ports: Sequence[int]) -> list[str]:
    """``llmsched engine-sim`` flags for ``engines`` (one process, one port each).

    The CLI's per-engine knobs are the port and the speed; every other value must be
    common to the fleet (the seeds are ``--seed`` + index, as ``fleet()`` numbers them).
    :func:`check_argv` proves the CLI reads back exactly ``engines``.
    """
    first = engines[0]
    t = first.timing
    argv = [sys.executable, "-m", "services", "engine-sim", "--host", "127.0.0.1",
            "--port", ",".join(str(p) for p in ports),
            "--speed", ",".join(f"{cfg.speed:g}" for cfg in engines),
            "--seed", str(first.seed), "--served-model-name", MODEL,
            "--max-num-seqs", str(first.max_num_seqs),
            "--max-model-len", str(first.max_model_len),
            "--block-size", str(first.block_size),
            "--num-gpu-blocks-override", str(first.num_gpu_blocks),
            "--max-num-batched-tokens", str(first.max_num_batched_tokens),
            "--enable-prefix-caching" if first.enable_prefix_caching
            else "--no-enable-prefix-caching",
            "--default-output-tokens", str(first.default_output_tokens),
            "--log-level", "WARNING"]
    for name, value in dataclasses.asdict(t).items():
        argv += ["--" + name.replace("_", "-"), repr(float(value))]
    return argv


def check_argv(engines: Sequence[EngineConfig], argv: list[str]) -> list[str]:
    """Differences between ``engines`` and what the engine-sim CLI makes of ``argv``."""
    from services.enginesim.cli import build_parser, plan_fleet

    start = argv.index("engine-sim") + 1
    plan = plan_fleet(build_parser().parse_args(argv[start:]))
    problems = []
    if len(plan) != len(engines):
        return [f"CLI plans {len(plan)} engines, the fleet has {len(engines)}"]
    for index, ((got, _port), want) in enumerate(zip(plan, engines, strict=True)):
        got = dataclasses.replace(got, served_model_name=want.served_model_name,
                                  model=want.model)
        for f in dataclasses.fields(EngineConfig):
            a, b = getattr(got, f.name), getattr(want, f.name)
            if a != b:
                problems.append(f"engine {index}: {f.name} is {a!r} via the CLI, {b!r} in fleet()")
    return problems


@dataclass
class EngineScrape:
    """One engine's gauges and request counter."""

    waiting: float
    running: float
    success: float


def read_metrics(text: str) -> EngineScrape:
    series = parse_selected(text, _SELECTED)

    def total(name: str) -> float:
        return sum(value for _labels, value in series.get(name, []))

    return EngineScrape(total(WAITING), total(RUNNING), total(SUCCESS))


@dataclass
class Fleet:
    """The running simulated engines."""

    procs: Processes
    ports: list[int]
    speeds: list[float]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def keys(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    async def scrape(self, session: aiohttp.ClientSession) -> list[EngineScrape]:
        async def one(url: str) -> EngineScrape:
            status, body = await fetch(session, "GET", url + "/metrics")
            if status != 200:
                raise StackError(f"{url}/metrics answered {status}")
            return read_metrics(body.decode())

        return list(await asyncio.gather(*(one(url) for url in self.urls)))

    async def sim_state(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Each engine's ``/_sim/state`` (modelled busy time and step count among others)."""
        async def one(url: str) -> dict[str, Any]:
            status, body = await fetch(session, "GET", url + "/_sim/state")
            if status != 200:
                raise StackError(f"{url}/_sim/state answered {status}")
            doc: dict[str, Any] = json.loads(body)
            return doc

        return list(await asyncio.gather(*(one(url) for url in self.urls)))

    async def wait_idle(self, session: aiohttp.ClientSession, timeout_s: float = 300) -> None:
        """Until no engine runs or queues anything (the previous run has drained)."""

        async def idle() -> tuple[bool, str]:
            scrapes = await self.scrape(session)
            busy = [s.running + s.waiting for s in scrapes]
            return not any(busy), f"running+waiting per engine {busy}"

        await poll("fleet idle", self.procs, idle, timeout_s)


@contextlib.contextmanager
def running_fleet(workdir: Path, engines: Sequence[EngineConfig], *, split: bool = False,
                  nice: int = 0) -> Iterator[Fleet]:
    """The engines as ``engine-sim`` processes, with the same configs as ``engines``.

    One process for the whole fleet, or (``split``) one per engine, so that serving one
    engine's ``/metrics`` does not hold up the others' steps. ``nice`` < 0 raises their CPU
    priority: they stand for GPUs, which the routers' CPU use does not slow down.
    """
    ports = [free_port() for _ in engines]
    groups = [[i] for i in range(len(engines))] if split else [list(range(len(engines)))]
    argvs = []
    for group in groups:
        subset = [engines[i] for i in group]
        argv = enginesim_argv(subset, [ports[i] for i in group])
        problems = check_argv(subset, argv)
        if problems:
            raise StackError("the engine-sim CLI cannot express the fleet: "
                             + "; ".join(problems))
        argvs.append(argv)
    procs = Processes(workdir)
    try:
        for index, argv in enumerate(argvs):
            child = procs.start("enginesim" if len(argvs) == 1 else f"enginesim-{index}", argv)
            if nice:
                raise_priority(child.proc.pid, nice)
        yield Fleet(procs, ports, [cfg.speed for cfg in engines])
    finally:
        procs.stop()


async def wait_fleet(fleet: Fleet, session: aiohttp.ClientSession) -> None:
    for url in fleet.urls:
        async def answers(url: str = url) -> tuple[bool, str]:
            status, body = await fetch(session, "POST", url + "/v1/chat/completions", CHAT_PROBE)
            return status == 200, f"{status} {body[:200]!r}"

        await poll(f"engine {url}", fleet.procs, answers, 60)


# --------------------------------------------------------------------------- llmsched


@dataclass(frozen=True)
class LlmschedSpec:
    """How llmsched is deployed for a run."""

    slo_s: float
    metrics_ms: float = 200.0
    apis: int = 1
    schedulers: int = 1
    log_level: str = "INFO"
    cache_aware: dict[str, Any] | None = None
    """The alias's pool runs the ``cache_aware`` mode with these settings (None: greybox)."""
    decide: str = "scheduler"
    """``gateway.decide``: the scheduler over NATS, or ``local`` (in the API process)."""


def config_doc(spec: LlmschedSpec, prefix: str, api_port: int, keys: Sequence[str]
               ) -> dict[str, Any]:
    """A greybox pool served as an alias by the gateway, and an S1 pool for select."""
    greybox = {"ttft_slo_ms": round(spec.slo_s * 1000, 1),
               "max_queue_wait_s": round(6 * spec.slo_s, 3)}
    modes: list[dict[str, Any]] = [{"name": "greybox", "type": "greybox", "greybox": greybox},
                                   {"name": "s1", "type": "s1", "w_a": 0.8, "w_b": 0.2}]
    if spec.cache_aware is not None:
        modes.append({"name": "ca", "type": "cache_aware", "greybox": greybox,
                      "cache_aware": spec.cache_aware})
    return {
        "global": {"interval": 60, "api_host": "127.0.0.1", "api_port": api_port,
                   "log_level": spec.log_level, "prefix": prefix, "select_timeout_ms": 500},
        "scheduler": {"pool_fetch_interval": 10, "metrics_fetch_interval": spec.metrics_ms},
        "modes": modes,
        "gateway": {"max_ongoing_requests": 1000, "hold_queue_size": 1000,
                    "decide": spec.decide},
        "pools": [
            {"name": GREYBOX_POOL, "partition": PARTITION, "engine_type": "vllm",
             "source": "static", "model": GREYBOX_ALIAS, "served_model_name": MODEL,
             "mode": "greybox" if spec.cache_aware is None else "ca",
             "members": list(keys)},
            {"name": S1_POOL, "partition": PARTITION, "engine_type": "vllm",
             "source": "static", "mode": "s1", "members": list(keys)},
        ],
    }


@dataclass
class Llmsched:
    """A running llmsched: its processes and the API URLs."""

    procs: Processes
    api_urls: list[str]
    has_outcome: bool = False
    """The API serves ``POST /scheduler/outcome``."""

    def logs(self, chars: int = 1500) -> dict[str, str]:
        return {name: child.log_tail(chars) for name, child in self.procs.children.items()}


@contextlib.contextmanager
def running_llmsched(workdir: Path, spec: LlmschedSpec, keys: Sequence[str]
                     ) -> Iterator[Llmsched]:
    """NATS, Valkey, scheduler replicas, one collector, API processes; stopped on exit."""
    from shared.embedded import nats_server, valkey_server

    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    with contextlib.ExitStack() as cleanup:
        with normal_priority():
            nats = nats_server(workdir=str(workdir)).start()
            cleanup.callback(nats.stop)
            valkey = valkey_server(workdir=str(workdir)).start()
            cleanup.callback(valkey.stop)
            assert nats.proc is not None and valkey.proc is not None
            procs.pids["nats"], procs.pids["valkey"] = nats.proc.pid, valkey.proc.pid
            cleanup.callback(procs.stop)
            prefix = f"routing_{os.getpid()}_{secrets.token_hex(3)}"
            env = dict(os.environ, NATS_URL=nats.url, REDIS_URL=valkey.url,
                       PYTHONUNBUFFERED="1")
            ports = [free_port() for _ in range(spec.apis)]
            configs = []
            for index, port in enumerate(ports):
                path = workdir / f"config-{index}.yaml"
                path.write_text(yaml.safe_dump(config_doc(spec, prefix, port, keys),
                                               sort_keys=False))
                configs.append(path)
            service = [sys.executable, "-m", "services"]
            for index in range(spec.schedulers):
                procs.start(f"scheduler-{index}", [*service, "scheduler", "--config",
                                                     str(configs[0])], env)
            procs.start("collector", [*service, "collector", "--config", str(configs[0])],
                        env)
            for index, path in enumerate(configs):
                procs.start(f"api-{index}", [*service, "api", "--config", str(path)], env)
        yield Llmsched(procs, [f"http://127.0.0.1:{port}" for port in ports])


def select_body(pool: str, keys: Sequence[str]) -> bytes:
    return json.dumps({"pool_name": pool, "partition": PARTITION,
                       "members": list(keys)}).encode()


async def wait_llmsched(stack: Llmsched, keys: Sequence[str],
                        session: aiohttp.ClientSession) -> None:
    """Every API healthy, both pools selecting a member, the gateway serving the alias."""
    members = {key.encode() for key in keys}
    chat = json.dumps({"model": GREYBOX_ALIAS, "max_tokens": 2,
                       "messages": [{"role": "user", "content": "ready?"}]}).encode()
    for url in stack.api_urls:
        async def healthy(url: str = url) -> tuple[bool, str]:
            status, body = await fetch(session, "GET", url + "/health")
            return status == 200, f"{status} {body[:200]!r}"

        await poll(f"API {url}", stack.procs, healthy, 60)
        # Select only on the S1 pool: a greybox select counts in flight until its outcome.
        for pool in (S1_POOL,):
            async def selects(url: str = url, pool: str = pool) -> tuple[bool, str]:
                status, body = await fetch(session, "POST", url + "/scheduler/select",
                                           select_body(pool, keys))
                return status == 200 and body.strip() in members, f"{status} {body[:200]!r}"

            await poll(f"select on {pool} via {url}", stack.procs, selects, 60)

        async def serves(url: str = url) -> tuple[bool, str]:
            status, body = await fetch(session, "POST", url + "/v1/chat/completions", chat)
            return status == 200, f"{status} {body[:200]!r}"

        await poll(f"gateway {url}", stack.procs, serves, 60)
    stack.has_outcome = await outcome_supported(stack.api_urls[0], session)


async def outcome_supported(api_url: str, session: aiohttp.ClientSession) -> bool:
    """Whether the API has ``POST /scheduler/outcome`` (an empty body: 400 if it does)."""
    status, _body = await fetch(session, "POST", api_url + "/scheduler/outcome", b"{}")
    return status not in (404, 405)


async def pool_status(stack: Llmsched, session: aiohttp.ClientSession, pool: str
                      ) -> dict[str, Any] | None:
    """``GET /pools/<pool>/Common/status`` (the greybox guard, limit, prediction per member)."""
    with contextlib.suppress(OSError, TimeoutError, aiohttp.ClientError, ValueError):
        status, body = await fetch(session, "GET",
                                   f"{stack.api_urls[0]}/pools/{pool}/{PARTITION}/status")
        if status == 200:
            doc: dict[str, Any] = json.loads(body)
            return doc
    return None


# --------------------------------------------------------------------------- vllm-router


def ensure_vllm_router(venv: Path = PEERS_VENV) -> Path:
    """The vllm-router launcher, installed from PyPI into its own venv when missing."""
    exe = venv / "bin" / "vllm-router"
    if exe.exists():
        return exe
    print(f"Installing vllm-router into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "vllm-router"], check=True)
    if not exe.exists():
        raise StackError(f"pip installed vllm-router but {exe} is missing")
    return exe


def vllm_router_version(venv: Path = PEERS_VENV) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('vllm-router'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


@contextlib.contextmanager
def running_vllm_router(workdir: Path, exe: Path, urls: Sequence[str], policy: str,
                        extra: Sequence[str] = ()) -> Iterator[tuple[Processes, str]]:
    """One vllm-router over ``urls`` with ``policy``; yields its processes and base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    port = free_port()
    try:
        with normal_priority():
            procs.start("vllm-router", [
                str(exe), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls,
                "--policy", policy, "--prometheus-port", str(free_port()),
                "--log-level", "warning", "--worker-startup-check-interval", "1", *extra])
        yield procs, f"http://127.0.0.1:{port}"
    finally:
        procs.stop()


async def wait_router(procs: Processes, url: str, session: aiohttp.ClientSession) -> None:
    async def answers() -> tuple[bool, str]:
        status, body = await fetch(session, "POST", url + "/v1/chat/completions", CHAT_PROBE)
        return status == 200, f"{status} {body[:200]!r}"

    await poll(f"vllm-router {url}", procs, answers, 60)
