"""The autoscaler's decision for one alias, table-driven."""

from __future__ import annotations

import pytest

from services.autoscaler.policy import (
    AliasMemory,
    AliasView,
    InstanceView,
    ScalingSettings,
    decide,
)

S = ScalingSettings(load_high=0.7, load_low=0.3, min_replicas=1, max_replicas=3,
                    scale_interval_s=10, up_after_s=0)
"""Scale-ups act at the first high evaluation here; ``up_after_s`` has its own test."""


def inst(name: str, state: str, inflight: int = 0, capacity: int = 4) -> InstanceView:
    return InstanceView(name=name, worker_id="w1", state=state,  # type: ignore[arg-type]
                        inflight=inflight, capacity=capacity)


@pytest.mark.parametrize(("instances", "waiting", "expect"), [
    # above high: wake the shallowest sleeper first
    ([inst("m", "ACTIVE", 4), inst("m-r2", "SLEEP_2"), inst("m-r3", "SLEEP_1")], 0,
     ("wake", "m-r3")),
    # above high, no sleeper: start a new one
    ([inst("m", "ACTIVE", 4)], 0, ("start", None)),
    # above high at max replicas: nothing
    ([inst("m", "ACTIVE", 4), inst("m-r2", "ACTIVE", 4), inst("m-r3", "ACTIVE", 4)], 0,
     None),
    # scale from zero: nothing active, requests wait → wake
    ([inst("m", "SLEEP_2")], 3, ("wake", "m")),
    # nothing at all, requests wait → start
    ([], 1, ("start", None)),
    # within the band: nothing
    ([inst("m", "ACTIVE", 2)], 0, None),
    # exactly at the high threshold: nothing (strictly above acts)
    ([inst("m", "ACTIVE", 7, capacity=10)], 0, None),
])
def test_scale_up(instances: list[InstanceView], waiting: int,
                  expect: tuple[str, str | None] | None) -> None:
    view = AliasView("m", tuple(instances), waiting=waiting)
    d = decide(view, S, AliasMemory(), now=100)
    got = None if d.action is None else (d.action.kind, d.action.instance)
    assert got == expect, d.note


@pytest.mark.parametrize(("instances", "expect"), [
    # two active, idle: the idler one goes ACTIVE → SLEEP_1
    ([inst("m", "ACTIVE", 1), inst("m-r2", "ACTIVE", 0)], ("sleep", "m-r2", 1)),
    # one active (= min): the sleeper goes one level deeper
    ([inst("m", "ACTIVE", 0), inst("m-r2", "SLEEP_1")], ("sleep", "m-r2", 2)),
    ([inst("m", "ACTIVE", 0), inst("m-r2", "SLEEP_2")], ("unload", "m-r2", 0)),
    # nothing left to step down
    ([inst("m", "ACTIVE", 0), inst("m-r2", "UNLOADED")], None),
    # a step down that would push the rest above load_high is not taken
    ([inst("m", "ACTIVE", 0, capacity=10), inst("m-r2", "ACTIVE", 2, capacity=2)], None),
])
def test_scale_down_one_step(instances: list[InstanceView],
                             expect: tuple[str, str, int] | None) -> None:
    view = AliasView("m", tuple(instances))
    memory = AliasMemory(low_since=0.0)
    d = decide(view, ScalingSettings(min_replicas=1, scale_interval_s=10, load_low=0.3,
                                     instance_capacity=4), memory, now=100)
    got = None if d.action is None else (d.action.kind, d.action.instance, d.action.level)
    assert got == expect, d.note


def test_min_replicas_zero_scales_to_zero() -> None:
    settings = ScalingSettings(min_replicas=0, scale_interval_s=10)
    view = AliasView("m", (inst("m", "ACTIVE", 0),))
    d = decide(view, settings, AliasMemory(low_since=0.0), now=100)
    assert d.action is not None and (d.action.kind, d.action.level) == ("sleep", 1), d.note


def test_low_load_must_last_before_stepping_down() -> None:
    view = AliasView("m", (inst("m", "ACTIVE", 0), inst("m-r2", "ACTIVE", 0)))
    memory = AliasMemory()
    assert decide(view, S, memory, now=0).action is None
    assert decide(view, S, memory, now=19).action is None
    d = decide(view, S, memory, now=20)
    assert d.action is not None and d.action.kind == "sleep", d.note


def test_cooldown_after_an_action_unless_urgent() -> None:
    memory = AliasMemory()
    busy = AliasView("m", (inst("m", "ACTIVE", 4), inst("m-r2", "SLEEP_1"),
                           inst("m-r3", "SLEEP_1")))
    assert decide(busy, S, memory, now=0).action is not None
    assert decide(busy, S, memory, now=5).action is None, "cooling down"
    assert decide(busy, S, memory, now=5, urgent=True).action is not None
    assert decide(busy, S, AliasMemory(last_action_at=0), now=10).action is not None


def test_steady_load_at_threshold_does_not_flap() -> None:
    """Load pinned at load_high: no action, tick after tick."""
    memory = AliasMemory()
    view = AliasView("m", (inst("m", "ACTIVE", 7, capacity=10), inst("m-r2", "SLEEP_1")))
    actions = [decide(view, S, memory, now=t).action for t in range(0, 300, 10)]
    assert actions == [None] * len(actions)


def test_after_waking_the_halved_load_stays_in_band() -> None:
    """0.8 on one instance → wake → 0.4 on two: neither threshold is crossed again."""
    memory = AliasMemory()
    one = AliasView("m", (inst("m", "ACTIVE", 8, capacity=10), inst("m-r2", "SLEEP_1")))
    assert decide(one, S, memory, now=0).action is not None
    two = AliasView("m", (inst("m", "ACTIVE", 4, capacity=10),
                          inst("m-r2", "ACTIVE", 4, capacity=10)))
    assert [decide(two, S, memory, now=t).action for t in range(10, 200, 10)] == [None] * 19


def test_waits_for_a_starting_instance() -> None:
    view = AliasView("m", (inst("m", "ACTIVE", 8), inst("m-r2", "STARTING")))
    d = decide(view, S, AliasMemory(), now=100)
    assert d.action is None and "starting" in d.note


def test_rising_load_keeps_a_draining_instance() -> None:
    view = AliasView("m", (inst("m", "ACTIVE", 4), inst("m-r2", "DRAINING", 1),
                           inst("m-r3", "SLEEP_1")))
    d = decide(view, S, AliasMemory(), now=100)
    assert d.action is not None and (d.action.kind, d.action.instance) == ("undrain", "m-r2")


def test_requests_stranded_on_a_sleeping_instance_wake_it_whatever_the_load() -> None:
    view = AliasView("m", (inst("m", "ACTIVE", 0), inst("m-r2", "SLEEP_1", 2)))
    d = decide(view, S, AliasMemory(last_action_at=99.9), now=100)
    assert d.action is not None and (d.action.kind, d.action.instance) == ("wake", "m-r2")


def test_a_high_load_must_last_up_after_s_unless_requests_wait() -> None:
    """One load event that counted a request twice wakes nothing; a lasting one does."""
    settings = ScalingSettings(load_high=0.7, load_low=0.3, min_replicas=1, max_replicas=3,
                               scale_interval_s=0.5, up_after_s=1.5)
    high = AliasView("m", (inst("m", "ACTIVE", 8, capacity=10), inst("m-r2", "SLEEP_1")))
    steady = AliasView("m", (inst("m", "ACTIVE", 7, capacity=10), inst("m-r2", "SLEEP_1")))
    memory = AliasMemory()
    assert decide(high, settings, memory, now=0).action is None
    assert decide(high, settings, memory, now=1.0).action is None
    assert decide(steady, settings, memory, now=1.5).action is None  # back at the threshold
    assert decide(high, settings, memory, now=2.0).action is None  # the clock starts again
    woke = decide(high, settings, memory, now=3.5).action
    assert woke is not None and woke.kind == "wake", woke
    waiting = AliasView("m", (inst("m", "ACTIVE", 8, capacity=10), inst("m-r2", "SLEEP_1")),
                        waiting=2)
    assert decide(waiting, settings, AliasMemory(), now=0).action is not None
    assert decide(high, settings, AliasMemory(), now=0, urgent=True).action is not None
