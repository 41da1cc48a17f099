"""The worker's instance table: start, stop, sleep, wake and live status of engine instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.worker.control import EngineCallError, EngineControl, EngineLoad
from services.worker.engines import ChildEngine, Engine, EngineFailed, InProcessSim
from services.worker.gpu import GpuProbe, summarise, visible
from services.worker.instance import Instance, NotFound
from services.worker.launch import Command, sglang_command, sim_command, sim_config, vllm_command
from services.worker.models import (
    Backend,
    GpuInfo,
    InstanceInfo,
    InstanceStatus,
    ModelSpec,
)
from shared.errors import BadRequest
from shared.http_server import free_port
from shared.tasks import cancel_and_wait
from shared.workers import InstanceSummary

log = logging.getLogger("llmsched.worker")

START_TIMEOUT_S: dict[Backend, float] = {
    "sim": 30.0, "sim-process": 60.0, "vllm-process": 900.0, "sglang-process": 900.0}
DEFAULT_GPU_SHARE = 0.9
SUMMARY_LOAD_TIMEOUT_S = 2.0
"""A heartbeat waits this long for an engine's /metrics; it must not miss its beat."""


@dataclass
class WorkerSettings:
    """Host-level choices of one worker."""

    engine_host: str = "127.0.0.1"
    """Address engines listen on."""
    advertise_host: str = "127.0.0.1"
    """Host put in the instance URLs handed to the manager."""
    default_backend: Backend = "sim"
    """Backend of a non-fake model whose spec names none."""
    vllm_python: str = sys.executable
    sglang_python: str = sys.executable
    sim_python: str = sys.executable
    gpu: bool = False
    """A GPU host (nvidia-smi present): enables --enable-sleep-mode and real GPU figures."""
    log_dir: Path = field(default_factory=lambda: Path("llmsched-worker-logs"))
    sim_gpu_memory_gb: float = 80.0
    """GPU memory a host without GPUs pretends to have (simulated gpu_info)."""


def _gpu_share(spec: ModelSpec) -> float:
    if spec.gpu_memory_utilization is not None:
        return spec.gpu_memory_utilization
    return 0.0 if spec.fake else DEFAULT_GPU_SHARE  # a fake model loads no weights


class InstanceManager:
    """Owns every engine of this worker; all methods run on the worker's event loop."""

    def __init__(self, settings: WorkerSettings, http: httpx.AsyncClient,
                 gpu: GpuProbe | None = None) -> None:
        self.settings = settings
        self.http = http
        self.control = EngineControl(http)
        self.gpu = gpu or GpuProbe(settings.gpu)
        self.instances: dict[str, Instance] = {}
        self.on_change: Callable[[], None] = lambda: None
        self.stopping = False
        """The worker is shutting down: not ready for new work."""
        self._naming = asyncio.Lock()

    # -- lookup ------------------------------------------------------------------
    def get(self, name: str) -> Instance:
        """The instance called ``name``; NotFound otherwise."""
        inst = self.instances.get(name)
        if inst is None:
            raise NotFound(name)
        return inst

    def infos(self) -> list[InstanceInfo]:
        """Every instance, by name."""
        host = self.settings.advertise_host
        return [self.instances[n].info(host) for n in sorted(self.instances)]

    async def summaries(self) -> list[InstanceSummary]:
        """Every instance as a heartbeat reports it, with the same figures as its status."""
        host = self.settings.advertise_host
        insts = [self.instances[n] for n in sorted(self.instances)]
        loads = await asyncio.gather(*(self._load(i) for i in insts))
        return [i.summary(host, load) for i, load in zip(insts, loads, strict=True)]

    async def _load(self, inst: Instance) -> EngineLoad | None:
        """The engine's /metrics, or None when it is not up or does not answer in time."""
        engine = inst.engine
        if engine is None or inst.state in ("starting", "failed"):
            return None
        try:
            return await asyncio.wait_for(self.control.metrics(engine.url, inst.spec.engine),
                                          SUMMARY_LOAD_TIMEOUT_S)
        except (EngineCallError, TimeoutError):
            return None

    # -- start / stop --------------------------------------------------------------
    def _backend(self, spec: ModelSpec) -> Backend:
        backend = spec.engine_backend
        if spec.fake:
            backend = backend or "sim"
            if backend not in ("sim", "sim-process"):
                raise BadRequest("engine_backend", "a fake model runs on the simulator: "
                                 "engine_backend must be sim or sim-process")
            return backend
        backend = backend or self.settings.default_backend
        if backend == "vllm-process" and spec.engine != "vllm":
            raise BadRequest("engine_backend", "vllm-process runs engine vllm only")
        if backend == "sglang-process" and spec.engine != "sglang":
            raise BadRequest("engine_backend", "sglang-process runs engine sglang only")
        return backend

    def _name(self, spec: ModelSpec) -> tuple[str, int]:
        taken = {n for n, i in self.instances.items() if i.state != "failed"}
        if spec.instance is not None:
            if spec.instance in taken:
                raise BadRequest("instance", f"instance {spec.instance!r} exists", 409,
                                 "instance_exists")
            match = re.fullmatch(re.escape(spec.alias) + r"-r(\d+)", spec.instance)
            return spec.instance, int(match.group(1)) if match else 1
        if spec.alias not in taken:
            return spec.alias, 1
        if not spec.add_replica:
            raise BadRequest("alias", f"instance {spec.alias!r} exists; set add_replica: true "
                             "to start another replica", 409, "instance_exists")
        replica = 2
        while f"{spec.alias}-r{replica}" in taken:
            replica += 1
        return f"{spec.alias}-r{replica}", replica

    def _command(self, inst: Instance, port: int) -> Command:
        s = self.settings
        spec, names, host = inst.spec, inst.served_names, s.engine_host
        if inst.backend == "sim-process":
            return sim_command(spec, names, python=s.sim_python, host=host, port=port)
        if inst.backend == "vllm-process":
            return vllm_command(spec, names, python=s.vllm_python, host=host, port=port,
                                gpu=s.gpu)
        return sglang_command(spec, names, python=s.sglang_python, host=host, port=port,
                              gpu=s.gpu)

    async def start(self, spec: ModelSpec, ignored: list[str] | None = None, *,
                    wait: bool = False) -> Instance:
        """Start an instance for ``spec``; with ``wait`` return only once it is ready or failed."""
        backend = self._backend(spec)
        async with self._naming:
            name, replica = self._name(spec)
            names = [spec.alias] if name == spec.alias else [spec.alias, name]
            inst = Instance(name, replica, spec, backend, names, ignored or [])
            config = sim_config(spec, names) if backend == "sim" else None
            command = None
            port = spec.port or 0
            if config is None:
                port = port or free_port(self.settings.engine_host)
                inst.port = port
                command = self._command(inst, port)
            old = self.instances.pop(name, None)
            if old is not None:
                await self._shutdown(old)
            self.instances[name] = inst
        try:
            if config is not None:
                inst.engine = await InProcessSim.start(config, self.settings.engine_host, port)
            else:
                assert command is not None
                log_file = self.settings.log_dir / f"{name}-{int(time.time())}.log"
                inst.engine = await ChildEngine.spawn(command, self.settings.engine_host, port,
                                                      log_file)
        except (OSError, EngineFailed) as err:
            self.instances.pop(name, None)
            status, field = (409, "port") if isinstance(err, OSError) else (502, None)
            raise BadRequest(field, f"cannot start {name}: {err}", status) from None
        inst.port = inst.engine.port
        log.info("Instance %s (%s, %s) starting on %s", name, spec.alias, backend,
                 inst.local_url)
        inst.ready_task = asyncio.create_task(self._become_ready(inst), name=f"ready-{name}")
        self.on_change()
        if wait or backend == "sim":
            await asyncio.shield(inst.ready_task)
        return inst

    async def _become_ready(self, inst: Instance) -> None:
        engine = inst.engine
        assert engine is not None
        timeout = inst.spec.start_timeout_s or START_TIMEOUT_S[inst.backend]
        try:
            await engine.wait_ready(self.http, timeout)
            if inst.is_simulated and inst.spec.fake_delay_ms > 0:
                await self.control.set_sim_latency(engine.url, inst.spec.fake_delay_ms)
        except (EngineFailed, EngineCallError) as err:
            inst.state, inst.error = "failed", str(err)
            log.error("Instance %s failed to start: %s", inst.name, err)
            await engine.stop()
        else:
            if inst.state == "starting":
                inst.state = "running"
            inst.ready_at = time.time()
            log.info("Instance %s ready at %s", inst.name, engine.url)
        finally:
            inst.ready.set()
            self.on_change()

    async def _shutdown(self, inst: Instance) -> None:
        task = inst.ready_task
        if task is not None:
            await cancel_and_wait([task])  # its readiness polls use httpx (see shared.tasks)
        if inst.engine is not None:
            await inst.engine.stop()

    async def stop(self, name: str) -> InstanceInfo:
        """Stop (unload) an instance and forget it."""
        inst = self.get(name)
        async with inst.lock:
            if self.instances.get(name) is not inst:
                raise NotFound(name)
            del self.instances[name]
            await self._shutdown(inst)
        log.info("Instance %s stopped", name)
        self.on_change()
        return inst.info(self.settings.advertise_host)

    async def stop_all(self) -> None:
        """Stop every instance (worker shutdown)."""
        self.stopping = True
        names = list(self.instances)
        results = await asyncio.gather(*(self.stop(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, NotFound):
                log.warning("Stopping %s failed: %s", name, result)

    def check_exits(self) -> None:
        """Mark instances whose engine died as failed."""
        for inst in self.instances.values():
            engine = inst.engine
            if engine is None or inst.state in ("failed", "starting"):
                continue
            reason = engine.exit_reason()
            if reason is not None:
                inst.state, inst.error = "failed", reason
                log.error("Instance %s died: %s", inst.name, reason)
                self.on_change()

    # -- sleep / wake --------------------------------------------------------------
    def _ready(self, inst: Instance) -> Engine:
        if inst.state in ("starting", "failed") or inst.engine is None:
            raise BadRequest(None, f"instance {inst.name} is {inst.state}", 409,
                             "instance_not_ready")
        return inst.engine

    async def sleep(self, name: str, level: int, drain_timeout_s: float) -> Instance:
        """Drain proxied requests (bounded), then put the engine to sleep at ``level``."""
        inst = self.get(name)
        async with inst.lock:
            engine = self._ready(inst)
            if inst.state == "sleeping" and inst.sleep_level >= level:
                return inst
            if inst.state == "sleeping":
                # Deeper sleep: an engine asleep at level 1 keeps its weights in host memory;
                # level 2 drops them, which only a sleep from awake does.
                try:
                    await self.control.wake(engine.url, inst.spec.engine)
                except EngineCallError as err:
                    raise BadRequest(None, f"engine refused wake-up before a deeper sleep: "
                                     f"{err.message}", 502, "engine_error") from None
                inst.state, inst.sleep_level = "running", 0
            previous = inst.state
            inst.state = "draining"
            self.on_change()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.stats.idle.wait(), drain_timeout_s)
            if inst.stats.inflight > 0:
                log.warning("Instance %s sleeps with %d request(s) still in flight", name,
                            inst.stats.inflight)
            try:
                await self.control.sleep(engine.url, inst.spec.engine, level)
            except EngineCallError as err:
                inst.state = previous
                self.on_change()
                raise BadRequest(None, f"engine refused sleep: {err.message}", 502,
                                 "engine_error") from None
            inst.state, inst.sleep_level = "sleeping", level
        log.info("Instance %s sleeping at level %d", name, level)
        self.on_change()
        return inst

    async def wake(self, name: str) -> Instance:
        """Wake a sleeping engine."""
        inst = self.get(name)
        async with inst.lock:
            engine = self._ready(inst)
            if inst.state == "running":
                return inst
            try:
                await self.control.wake(engine.url, inst.spec.engine)
            except EngineCallError as err:
                raise BadRequest(None, f"engine refused wake-up: {err.message}", 502,
                                 "engine_error") from None
            inst.state, inst.sleep_level = "running", 0
        log.info("Instance %s awake", name)
        self.on_change()
        return inst

    # -- live figures --------------------------------------------------------------
    def _sim_gpu(self, utilization: float) -> GpuInfo:
        total = self.settings.sim_gpu_memory_gb
        used = sum(_gpu_share(i.spec) * total for i in self.instances.values()
                   if i.state != "failed" and i.sleep_level == 0)
        return GpuInfo(available_memory_gb=round(max(0.0, total - used), 3),
                       utilization=round(min(1.0, max(0.0, utilization)), 4),
                       total_memory_gb=total, source="simulated")

    async def host_gpu(self) -> GpuInfo:
        """The host's GPUs, or the simulated figure on a host without any."""
        real = summarise(await self.gpu.devices())
        if real is not None:
            return real
        awake = [i for i in self.instances.values() if i.state == "running"]
        capacity = sum(i.spec.capacity for i in awake)
        return self._sim_gpu(sum(i.stats.inflight for i in awake) / capacity if capacity else 0)

    async def _instance_gpu(self, inst: Instance, load: EngineLoad | None) -> GpuInfo:
        devices = visible(await self.gpu.devices(), inst.spec.env.get("CUDA_VISIBLE_DEVICES"))
        real = None if inst.is_simulated else summarise(devices)
        if real is not None:
            return real
        busy = (load.running or 0.0) if load is not None else float(inst.stats.inflight)
        return self._sim_gpu(busy / inst.spec.capacity if inst.sleep_level == 0 else 0.0)

    async def status(self, name: str) -> InstanceStatus:
        """Live status: the engine's /metrics and /is_sleeping plus the proxy's measurements."""
        inst = self.get(name)
        load: EngineLoad | None = None
        error: str | None = inst.error
        engine = inst.engine
        if engine is not None and inst.state not in ("starting", "failed"):
            got_load, sleeping = await asyncio.gather(
                self.control.metrics(engine.url, inst.spec.engine),
                self.control.is_sleeping(engine.url, inst.spec.engine), return_exceptions=True)
            if isinstance(got_load, EngineLoad):
                load = got_load
            elif isinstance(got_load, BaseException):
                error = str(got_load)
            self._reconcile(inst, load, sleeping if isinstance(sleeping, bool) else None)
        stats = inst.stats
        inflight, ttft_avg, e2e_avg = inst.live(load)
        return InstanceStatus(
            alias=inst.name, model_alias=inst.spec.alias, state=inst.state,
            sleep_level_value=inst.sleep_level, is_sleeping=inst.sleep_level > 0,
            inflight_requests=inflight, capacity=inst.spec.capacity,
            ttft_last=stats.ttft_last, ttft_avg=ttft_avg,
            e2e_last=stats.e2e_last, e2e_avg=e2e_avg,
            requests_total=stats.requests_total, gpu_info=await self._instance_gpu(inst, load),
            engine_reachable=load is not None,
            running=load.running if load else None, waiting=load.waiting if load else None,
            kv_cache_usage=load.kv_cache_usage if load else None, error=error)

    def _reconcile(self, inst: Instance, load: EngineLoad | None, sleeping: bool | None) -> None:
        # The engine is the truth: someone may have slept or woken it directly.
        if inst.state not in ("running", "sleeping") or inst.lock.locked():
            return
        level = load.sleep_level if load is not None else None
        if level is None and sleeping is not None:
            level = (inst.sleep_level or 1) if sleeping else 0
        if level is None or level == inst.sleep_level:
            return
        log.info("Instance %s: engine reports sleep level %d (was %d)", inst.name, level,
                 inst.sleep_level)
        inst.sleep_level = level
        inst.state = "sleeping" if level > 0 else "running"
        self.on_change()

    async def watch(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Notice dead engines until ``stop`` (the worker's shutdown)."""
        while not stop.is_set():
            self.check_exits()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
        self.stopping = True
