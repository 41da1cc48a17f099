"""The autoscaler's loop: per alias, look (registry + load), decide (policy), act (workers).

Only the lease holder acts. Each alias is evaluated every ``scale_interval_s``, and at
once when a gateway holds requests for it (scale from zero). At most one action runs
per alias at a time; a sleep is preceded by a drain: the instance leaves routing, its
in-flight requests finish (or ``drain_timeout_s`` passes), then it sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.autoscaler.executor import ActionFailed, WorkerActions, pick_worker
from services.autoscaler.policy import (
    SLEEP_ORDER,
    Action,
    AliasMemory,
    AliasView,
    InstanceView,
    ScalingSettings,
    decide,
)
from services.autoscaler.settings import env_overrides, instance_capacity, settings_for
from shared.autoscaling import AutoscalingOverrides
from shared.config import Config
from shared.members import member_key
from shared.messages import LoadEvent
from shared.registry_view import RegistryView
from shared.routing import DemandEvent
from shared.scaling import ActionRecord, ScalingLog, scaling_state
from shared.subjects import MODELS_PARTITION
from shared.workers import InstanceSummary, WorkerRecord, WorkerRegistry

log = logging.getLogger("llmsched.autoscaler")

LOAD_FRESH_S = 5.0
"""Load older than this is not trusted for a step down (the scheduler may be gone)."""
DEMAND_FRESH_S = 3.0
DRAIN_POLL_S = 0.2
DRAIN_MARK_GRACE_S = 30.0
EXPECT_FOR_S = 15.0
"""After an action, its outcome stands in for the registry until a heartbeat agrees."""

Publish = Callable[[ActionRecord], Awaitable[None]]
Announce = Callable[[str, str, str], Awaitable[None]]


@dataclass
class _Placed:
    """An instance and where it runs."""

    summary: InstanceSummary
    worker: WorkerRecord

    @property
    def key(self) -> str | None:
        url = urlsplit(self.summary.url)
        try:
            port = url.port
        except ValueError:
            return None
        return member_key(url.hostname, port) if url.hostname and port else None


@dataclass
class _AliasState:
    memory: AliasMemory = field(default_factory=AliasMemory)
    next_at: float = 0.0
    task: asyncio.Task[None] | None = None
    draining: dict[str, asyncio.Event] = field(default_factory=dict)
    """Instances being drained → set to call the drain off (load rose meanwhile)."""
    expected: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    """Instance → (state an action left it in, its worker, until when to trust that)."""
    last_note: str = ""


class Scaler:
    """Evaluates every registered alias and carries out the policy's actions."""

    def __init__(self, config: Config, view: RegistryView, registry: WorkerRegistry,
                 scaling: ScalingLog, actions: WorkerActions, publish: Publish,
                 announce: Announce, *, name: str,
                 env: AutoscalingOverrides | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.view = view
        self.registry = registry
        self.scaling = scaling
        self.actions = actions
        self.publish = publish
        self.announce = announce
        self.name = name
        self.env = env if env is not None else env_overrides()
        self.clock = clock
        self.loads: dict[tuple[str, str], LoadEvent] = {}
        self.demand: dict[tuple[str, str], DemandEvent] = {}
        self._aliases: dict[str, _AliasState] = {}
        self._urgent: set[str] = set()
        self._known: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()
        """Aliases seen registered: when one is deleted, its instances are unloaded."""
        self._wake = asyncio.Event()

    # -- inputs ----------------------------------------------------------------------
    def on_load(self, event: LoadEvent) -> None:
        self.loads[(event.name, event.partition)] = event

    def on_demand(self, event: DemandEvent) -> None:
        """A gateway holds requests for an alias: evaluate it now, not at the next tick."""
        self.demand[(event.alias, event.gateway)] = event
        if event.waiting > 0:
            self._urgent.add(event.alias)
            self._wake.set()

    def pool_of(self, alias: str) -> tuple[str, str]:
        configured = self.config.configured_alias(alias)
        return configured.ident if configured is not None else (alias, MODELS_PARTITION)

    def settings(self, alias: str) -> ScalingSettings:
        return settings_for(alias, self.view.models.get(alias), self.config, self.env)

    def _explicit_capacity(self, alias: str) -> bool:
        record = self.view.models.get(alias)
        per_model = self.config.autoscaling.models.get(alias)
        return bool((record and record.autoscaling.instance_capacity)
                    or (per_model and per_model.instance_capacity))

    def placed(self, alias: str) -> list[_Placed]:
        """The alias's instances on active workers."""
        return [_Placed(i, w) for w in self.view.workers if w.state == "active"
                for i in w.instances if i.model_alias == alias]

    def alias_view(self, alias: str, now: float) -> tuple[AliasView, bool]:
        """What the policy sees, and whether the load figures are fresh."""
        state = self._aliases.setdefault(alias, _AliasState())
        settings = self.settings(alias)
        record = self.view.models.get(alias)
        capacity = instance_capacity(record, settings, self._explicit_capacity(alias))
        load = self.loads.get(self.pool_of(alias))
        fresh = load is not None and now - load.at <= LOAD_FRESH_S
        inflight = load.inflight if load is not None and fresh else {}
        instances = []
        seen: set[str] = set()
        for p in self.placed(alias):
            name = p.summary.alias
            seen.add(name)
            st = "DRAINING" if name in state.draining else self._believed(
                state, name, scaling_state(p.summary.state, p.summary.sleep_level), now)
            if st == "UNLOADED":
                continue
            instances.append(InstanceView(
                name=name, worker_id=p.worker.worker_id, state=st,  # type: ignore[arg-type]
                inflight=inflight.get(p.key or "", 0), capacity=capacity))
        for name, (st, worker_id, until) in list(state.expected.items()):
            if name not in seen and now < until and st != "UNLOADED":
                # Started by this autoscaler, not yet in a heartbeat.
                instances.append(InstanceView(name=name, worker_id=worker_id,
                                              state="STARTING", capacity=capacity))
        waiting = sum(d.waiting for (a, _g), d in self.demand.items()
                      if a == alias and now - d.at <= DEMAND_FRESH_S)
        return AliasView(alias, tuple(instances), waiting=waiting), fresh

    # -- the loop ----------------------------------------------------------------------
    async def tick(self, now: float) -> None:
        """Evaluate the aliases that are due (or urgent); start their actions."""
        urgent, self._urgent = self._urgent, set()
        if self.view.loaded and self.view.healthy:
            self._known |= set(self.view.models)
            for alias in sorted(self._known - set(self.view.models)):
                self._retire(alias)
        for alias in sorted(self.view.models):
            state = self._aliases.setdefault(alias, _AliasState())
            if state.task is not None and not state.task.done():
                if state.draining:
                    self._maybe_call_off(alias, now)
                continue
            settings = self.settings(alias)
            view, _fresh = self.alias_view(alias, now)
            stranded = any(i.inflight for i in view.instances if i.state in SLEEP_ORDER)
            if alias not in urgent and not stranded and now < state.next_at:
                continue
            state.next_at = now + settings.scale_interval_s
            # Requests sent to an instance that fell asleep wait there: wake it now.
            self.evaluate(alias, settings, now, urgent=alias in urgent or stranded)

    def _retire(self, alias: str) -> None:
        """A deleted alias: unload its instances, one per tick, then forget it."""
        state = self._aliases.setdefault(alias, _AliasState())
        if state.task is not None and not state.task.done():
            return
        left = [p for p in self.placed(alias) if self._believed(
            state, p.summary.alias, "ACTIVE", self.clock()) != "UNLOADED"]
        if not left:
            self._known.discard(alias)
            self._aliases.pop(alias, None)
            forget = asyncio.ensure_future(self.scaling.forget_alias(alias))
            self._background.add(forget)
            forget.add_done_callback(self._background.discard)
            return
        victim = left[0]
        action = Action("unload", alias, victim.summary.alias, victim.worker.worker_id,
                        reason=f"{alias} is no longer registered")
        state.task = asyncio.create_task(self._act(action, 0.0, self.settings(alias)),
                                         name=f"retire-{alias}")

    def evaluate(self, alias: str, settings: ScalingSettings, now: float, *,
                 urgent: bool) -> None:
        state = self._aliases[alias]
        view, fresh = self.alias_view(alias, now)
        if not fresh and view.waiting == 0 and len(view.active) >= settings.min_replicas:
            self._note(alias, f"no fresh load figures for {alias}; no action")
            return
        decision = decide(view, settings, state.memory, now, urgent=urgent)
        self._note(alias, f"{alias}: {decision.note}")
        if decision.action is not None:
            state.task = asyncio.create_task(self._act(decision.action, decision.load,
                                                       settings),
                                             name=f"autoscale-{alias}")

    @staticmethod
    def _believed(state: _AliasState, name: str, reported: str, now: float) -> str:
        """The registry's state, unless an action just changed it and no heartbeat says so."""
        expected = state.expected.get(name)
        if expected is None:
            return reported
        target, _worker, until = expected
        if reported == target or now >= until:
            del state.expected[name]
            return reported
        return target

    def _maybe_call_off(self, alias: str, now: float) -> None:
        """While an instance drains, a load rise keeps it instead (the policy's undrain)."""
        state = self._aliases[alias]
        view, _fresh = self.alias_view(alias, now)
        decision = decide(view, self.settings(alias), AliasMemory(), now, urgent=True)
        action = decision.action
        if action is not None and action.kind == "undrain" and action.instance in state.draining:
            log.info("Autoscaler undrain %s %s: %s", alias, action.instance, action.reason)
            state.draining[action.instance].set()

    def _note(self, alias: str, note: str) -> None:
        state = self._aliases.setdefault(alias, _AliasState())
        if note != state.last_note:
            log.debug("%s", note)
            state.last_note = note

    async def run(self, stop: asyncio.Event, leading: Callable[[], Awaitable[bool]],
                  period_s: float = 1.0) -> None:
        """Tick every ``period_s`` (or on urgent demand) while this process leads."""
        was_leading = False
        while not stop.is_set():
            self._wake.clear()
            lead = await leading()
            if lead and not was_leading:
                await self._take_over()
            if not lead and was_leading:
                self._abandon()
            was_leading = lead
            if lead:
                try:
                    await self.tick(self.clock())
                except Exception:
                    log.exception("Autoscaler tick failed")
            with contextlib.suppress(TimeoutError):
                waiters = [asyncio.ensure_future(stop.wait()),
                           asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait(waiters, timeout=period_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        self._abandon()

    async def _take_over(self) -> None:
        """A new leader: drains a previous leader left behind are called off."""
        for alias_state in self._aliases.values():
            alias_state.memory = AliasMemory()
        with contextlib.suppress(Exception):
            for url in await self.registry.draining():
                await self.registry.clear_draining(url)
                log.info("Called off a drain left by a previous leader: %s", url)
        with contextlib.suppress(Exception):
            await self.view.refresh()

    def _abandon(self) -> None:
        for alias_state in self._aliases.values():
            if alias_state.task is not None:
                alias_state.task.cancel()
            alias_state.draining.clear()

    # -- actions -----------------------------------------------------------------------
    async def _act(self, action: Action, load: float, settings: ScalingSettings) -> None:
        log.info("Autoscaler %s %s %s: %s", action.kind, action.alias,
                 action.instance or "(new replica)", action.reason)
        error: str | None = None
        instance = action.instance
        try:
            instance = await self._carry_out(action, settings)
            self._expect(action, instance)
        except ActionFailed as err:
            error = err.args[0] if err.args else "failed"
            log.warning("Autoscaler %s of %s failed: %s", action.kind,
                        action.instance or action.alias, error)
        record = ActionRecord(alias=action.alias, kind=action.kind, instance=instance,
                              worker_id=action.worker_id, reason=action.reason,
                              at=self.clock(), level=action.level, ok=error is None,
                              error=error, load=None if load == float("inf") else load,
                              autoscaler=self.name)
        with contextlib.suppress(Exception):
            await self.scaling.record(record)
        with contextlib.suppress(Exception):
            await self.publish(record)
        with contextlib.suppress(Exception):
            await self.view.refresh()

    def _expect(self, action: Action, instance: str | None) -> None:
        if instance is None or action.kind == "start":
            return  # a start records its own expectation (it knows the worker)
        targets = {"wake": "ACTIVE", "undrain": "ACTIVE", "unload": "UNLOADED"}
        target = targets.get(action.kind, f"SLEEP_{action.level}")
        state = self._aliases.setdefault(action.alias, _AliasState())
        worker = action.worker_id or self._worker_of(action.alias, instance) or ""
        state.expected[instance] = (target, worker, self.clock() + EXPECT_FOR_S)

    def _worker_of(self, alias: str, instance: str) -> str | None:
        for p in self.placed(alias):
            if p.summary.alias == instance:
                return p.worker.worker_id
        return None

    def _find(self, alias: str, instance: str | None) -> _Placed:
        for p in self.placed(alias):
            if p.summary.alias == instance:
                return p
        raise ActionFailed(f"instance {instance} of {alias} is gone")

    async def _carry_out(self, action: Action, settings: ScalingSettings) -> str | None:
        alias = action.alias
        if action.kind == "start":
            record = self.view.models.get(alias)
            if record is None:
                raise ActionFailed(f"{alias} is no longer registered")
            worker = pick_worker(self.view.workers)
            if worker is None:
                raise ActionFailed("no active worker to start an instance on")
            name = await self.actions.start(worker, record.spec)
            self._aliases.setdefault(alias, _AliasState()).expected[name] = (
                "ACTIVE", worker.worker_id, self.clock() + EXPECT_FOR_S)
            with contextlib.suppress(Exception):
                await self.scaling.reloaded(name)
            return name
        placed = self._find(alias, action.instance)
        url = placed.worker.worker_url
        name = placed.summary.alias
        if action.kind == "wake":
            await self.actions.wake(url, name)
            await self._undrain(placed)
        elif action.kind == "undrain":
            await self._undrain(placed)
        elif action.kind == "sleep" and placed.summary.state == "running":
            await self._drain_then_sleep(placed, action.level, settings.drain_timeout_s)
        elif action.kind == "sleep":
            await self.actions.sleep(url, name, action.level)
        else:
            await self.actions.stop(url, name)
            with contextlib.suppress(Exception):
                await self.scaling.unloaded(alias, name, placed.worker.worker_id, self.clock())
        return name

    async def _drain_then_sleep(self, placed: _Placed, level: int, timeout_s: float) -> None:
        """Out of routing, wait for its requests, then sleep; a load rise calls it off."""
        alias, name = placed.summary.model_alias, placed.summary.alias
        called_off = asyncio.Event()
        state = self._aliases.setdefault(alias, _AliasState())
        state.draining[name] = called_off
        asleep = False
        try:
            drained = await self._drain(placed, timeout_s, called_off)
            if called_off.is_set():
                raise ActionFailed(f"drain of {name} called off: load rose; it stays active")
            if not drained:
                log.warning("Instance %s still has requests in flight after the %.0fs drain; "
                            "it sleeps anyway", name, timeout_s)
            await self.actions.sleep(placed.worker.worker_url, name, level)
            asleep = True
        finally:
            state.draining.pop(name, None)
            if not asleep:
                await self._undrain(placed)
        # The drain mark stays while it sleeps (until the worker's heartbeat says so, the
        # mark is what keeps requests away); a wake clears it.

    async def _drain(self, placed: _Placed, timeout_s: float, called_off: asyncio.Event
                     ) -> bool:
        """True when the scheduler reports nothing in flight on the instance any more."""
        url, key = placed.summary.url, placed.key
        await self.registry.mark_draining(url, timeout_s + DRAIN_MARK_GRACE_S)
        await self.announce("instance", placed.summary.alias, "drain")
        started = self.clock()
        pool = self.pool_of(placed.summary.model_alias)
        while self.clock() - started < timeout_s and not called_off.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(called_off.wait(), DRAIN_POLL_S)
            load = self.loads.get(pool)
            # Only figures computed after the scheduler saw the drain tell it is empty.
            if load is not None and load.at > started + 1.0 and not load.inflight.get(key or ""):
                return True
        return False

    async def _undrain(self, placed: _Placed) -> None:
        with contextlib.suppress(Exception):
            await self.registry.clear_draining(placed.summary.url)
        await self.announce("instance", placed.summary.alias, "undrain")

