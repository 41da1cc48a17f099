"""The scaling decision for one alias (SPEC §2.4), without I/O.

Load = Σ in-flight / Σ capacity of ACTIVE instances. Above ``load_high``: wake the
shallowest sleeping instance, else start one (up to ``max_replicas``). Below
``load_low``: one instance one step ACTIVE → SLEEP_1 → SLEEP_2 → UNLOADED, never below
``min_replicas`` active. Hysteresis: the band between the thresholds, a cooldown after
every action, a high load that must last ``up_after_s`` before a scale-up (one load event
that counted a request twice — its next one already routed, its outcome not yet applied —
wakes nothing), a low load that must last ``down_after_s`` before stepping down, and no
step down that would push the remaining instances above ``load_high``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

InstanceState = Literal["ACTIVE", "SLEEP_1", "SLEEP_2", "UNLOADED", "STARTING", "DRAINING",
                        "FAILED"]
ActionKind = Literal["wake", "start", "sleep", "unload", "undrain"]

SLEEP_ORDER: dict[str, int] = {"SLEEP_1": 1, "SLEEP_2": 2}


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """The knobs of one alias (defaults, env, config and the model's own, merged)."""

    load_high: float = 0.7
    load_low: float = 0.3
    instance_capacity: int = 4
    """Concurrent requests one instance serves when the model does not say."""
    min_replicas: int = 1
    max_replicas: int = 4
    scale_interval_s: float = 10.0
    """How often an alias is evaluated; one step down per interval at most."""
    cooldown_s: float | None = None
    """Quiet time after any action before the next one (default: one scale interval)."""
    down_after_s: float | None = None
    """How long load must stay below load_low before a step down (default: 2 intervals)."""
    up_after_s: float = 1.5
    """How long load must stay above load_high before a scale-up: longer than one load event
    (they come every second), shorter than any wake. Requests waiting skip it."""
    drain_timeout_s: float = 30.0
    """How long an instance drains before it sleeps even with requests in flight."""

    @property
    def cooldown(self) -> float:
        return self.scale_interval_s if self.cooldown_s is None else self.cooldown_s

    @property
    def down_after(self) -> float:
        return 2 * self.scale_interval_s if self.down_after_s is None else self.down_after_s


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance of the alias as the autoscaler sees it."""

    name: str
    worker_id: str
    state: InstanceState
    inflight: int = 0
    capacity: int = 1


@dataclass(frozen=True, slots=True)
class AliasView:
    """Everything the decision looks at for one alias."""

    alias: str
    instances: tuple[InstanceView, ...]
    waiting: int = 0
    """Requests held by the gateways because no instance is ACTIVE (scale from zero)."""

    @property
    def active(self) -> list[InstanceView]:
        return [i for i in self.instances if i.state == "ACTIVE"]

    @property
    def inflight(self) -> int:
        return sum(i.inflight for i in self.instances) + self.waiting

    @property
    def capacity(self) -> int:
        return sum(max(1, i.capacity) for i in self.active)

    @property
    def load(self) -> float:
        """Σ in-flight / Σ capacity of ACTIVE instances (inf with demand and no capacity)."""
        cap = self.capacity
        if cap == 0:
            return float("inf") if self.inflight > 0 else 0.0
        return self.inflight / cap


@dataclass(frozen=True, slots=True)
class Action:
    """One step for one instance, and why."""

    kind: ActionKind
    alias: str
    instance: str | None
    """None for ``start`` (the worker names the new replica)."""
    worker_id: str | None
    level: int = 0
    """Target sleep level of ``sleep``."""
    reason: str = ""


@dataclass(slots=True)
class AliasMemory:
    """What the decision remembers between evaluations of one alias."""

    last_action_at: float = float("-inf")
    low_since: float | None = None
    high_since: float | None = None


@dataclass(slots=True)
class Decision:
    """The action (if any) and a one-line account of the evaluation."""

    action: Action | None
    load: float
    note: str
    memory: AliasMemory = field(default_factory=AliasMemory)


def _fmt(load: float) -> str:
    return "inf" if load == float("inf") else f"{load:.2f}"


def decide(view: AliasView, settings: ScalingSettings, memory: AliasMemory, now: float,
           *, urgent: bool = False) -> Decision:
    """The next action for ``view``; ``urgent`` (a request is waiting) skips the cooldown."""
    load = view.load
    active = view.active
    busy = [i for i in view.instances if i.state in ("STARTING", "DRAINING")]
    summary = (f"load {_fmt(load)} ({view.inflight} in flight / {view.capacity} capacity, "
               f"{len(active)} active)")
    if load < settings.load_low:
        if memory.low_since is None:
            memory.low_since = now
    else:
        memory.low_since = None
    if load > settings.load_high:
        if memory.high_since is None:
            memory.high_since = now
    else:
        memory.high_since = None
    cooling = now - memory.last_action_at < settings.cooldown and not urgent
    stranded = sorted((i for i in view.instances if i.state in SLEEP_ORDER and i.inflight),
                      key=lambda i: (-i.inflight, i.name))
    if stranded:
        # Requests reached it just as it fell asleep (an engine queues them while asleep):
        # only a wake serves them, whatever the load.
        inst = stranded[0]
        memory.last_action_at = now
        return Decision(Action("wake", view.alias, inst.name, inst.worker_id,
                               reason=f"{inst.inflight} request(s) wait on {inst.name} "
                               f"({inst.state})"), load, summary, memory)

    wants_up = load > settings.load_high or len(active) < settings.min_replicas
    if wants_up:
        draining = sorted(i.name for i in busy if i.state == "DRAINING")
        if draining:
            # Cheapest capacity there is: the instance is still awake, only leaving.
            inst = next(i for i in view.instances if i.name == draining[0])
            memory.last_action_at = now
            return Decision(Action("undrain", view.alias, inst.name, inst.worker_id,
                                   reason=f"load {_fmt(load)} rose while {inst.name} "
                                   "drained: keep it"), load, summary, memory)
        if any(i.state == "STARTING" for i in busy):
            return Decision(None, load, f"{summary}: waiting for a starting instance", memory)
        if cooling:
            return Decision(None, load, f"{summary}: above threshold, cooling down", memory)
        high_for = 0.0 if memory.high_since is None else now - memory.high_since
        if (len(active) >= settings.min_replicas and not urgent and not view.waiting
                and high_for < settings.up_after_s):
            return Decision(None, load, f"{summary}: high for {high_for:.1f}s of "
                            f"{settings.up_after_s:.1f}s", memory)
        why = (f"load {_fmt(load)} > {settings.load_high}" if load > settings.load_high
               else f"{len(active)} active < min_replicas {settings.min_replicas}")
        action = _scale_up(view, settings, why)
        if action is None:
            return Decision(None, load, f"{summary}: at max_replicas "
                            f"{settings.max_replicas}", memory)
        memory.last_action_at = now
        return Decision(action, load, summary, memory)

    if load >= settings.load_low:
        return Decision(None, load, f"{summary}: within band", memory)
    if cooling or busy:
        return Decision(None, load, f"{summary}: low, but cooling down or an instance is "
                        "busy", memory)
    assert memory.low_since is not None
    if now - memory.low_since < settings.down_after:
        return Decision(None, load, f"{summary}: low for {now - memory.low_since:.1f}s of "
                        f"{settings.down_after:.1f}s", memory)
    action = _scale_down(view, settings, f"load {_fmt(load)} < {settings.load_low}")
    if action is None:
        return Decision(None, load, f"{summary}: nothing to step down", memory)
    memory.last_action_at = now
    return Decision(action, load, summary, memory)


def _scale_up(view: AliasView, settings: ScalingSettings, why: str) -> Action | None:
    sleeping = sorted((i for i in view.instances if i.state in SLEEP_ORDER),
                      key=lambda i: (SLEEP_ORDER[i.state], i.name))
    if sleeping:
        target = sleeping[0]
        return Action("wake", view.alias, target.name, target.worker_id,
                      reason=f"{why}: wake {target.name} from {target.state}")
    existing = [i for i in view.instances if i.state not in ("UNLOADED", "FAILED")]
    if len(existing) >= settings.max_replicas:
        return None
    return Action("start", view.alias, None, None,
                  reason=f"{why}: no sleeping instance, start replica {len(existing) + 1}")


def _scale_down(view: AliasView, settings: ScalingSettings, why: str) -> Action | None:
    active = view.active
    if len(active) > settings.min_replicas:
        victim = min(active, key=lambda i: (i.inflight, i.name))
        remaining = view.capacity - max(1, victim.capacity)
        after = view.inflight / remaining if remaining > 0 else (
            float("inf") if view.inflight else 0.0)
        if after <= settings.load_high:
            return Action("sleep", view.alias, victim.name, victim.worker_id, level=1,
                          reason=f"{why}: {victim.name} ACTIVE → SLEEP_1 "
                          f"(load after {_fmt(after)})")
    for state, step, level, target in (("SLEEP_1", "sleep", 2, "SLEEP_2"),
                                       ("SLEEP_2", "unload", 0, "UNLOADED")):
        candidates = sorted(i.name for i in view.instances if i.state == state)
        if candidates:
            inst = next(i for i in view.instances if i.name == candidates[-1])
            kind: ActionKind = "sleep" if step == "sleep" else "unload"
            return Action(kind, view.alias, inst.name, inst.worker_id, level=level,
                          reason=f"{why}: {inst.name} {state} → {target}")
    return None
