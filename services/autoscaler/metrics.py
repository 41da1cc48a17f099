"""The autoscaler's own series: actions by kind, and per alias its load and instances by state.

Loads and instances are read from the scaler's view when Prometheus scrapes. Every
autoscaler process exports its view; ``llmsched_autoscaler_leader`` says which one acts.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.autoscaler.scaler import Scaler
from shared.scaling import ActionRecord

STATES = ("ACTIVE", "STARTING", "DRAINING", "SLEEP_1", "SLEEP_2", "FAILED")
"""Instance states the autoscaler sees (UNLOADED ones are left out of its view)."""


class AutoscalerMetrics(Collector):
    """``llmsched_autoscaler_*``."""

    def __init__(self, registry: CollectorRegistry, scaler: Scaler) -> None:
        self._actions = Counter("llmsched_autoscaler_actions_total",
                                "Scaling actions by alias, kind (wake, start, sleep, unload, "
                                "undrain) and result (ok, failed)", ["alias", "kind", "result"],
                                registry=registry)
        self.scaler = scaler
        self.leader = False
        registry.register(self)

    def acted(self, record: ActionRecord) -> None:
        self._actions.labels(record.alias, record.kind, "ok" if record.ok else "failed").inc()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("llmsched_autoscaler_leader",
                                "1 while this autoscaler holds the leader lease (only it acts)",
                                value=1 if self.leader else 0)
        load = GaugeMetricFamily("llmsched_autoscaler_load",
                                 "Load of each alias: (in flight + held) / capacity of ACTIVE "
                                 "instances (+Inf: requests wait and nothing is ACTIVE)",
                                 labels=["alias"])
        inflight = GaugeMetricFamily("llmsched_autoscaler_inflight_requests",
                                     "Requests in flight on the alias's instances plus those "
                                     "the gateways hold for it", labels=["alias"])
        capacity = GaugeMetricFamily("llmsched_autoscaler_capacity_requests",
                                     "Concurrent requests the alias's ACTIVE instances take",
                                     labels=["alias"])
        fresh = GaugeMetricFamily("llmsched_autoscaler_load_fresh",
                                  "1 when the alias's load figures are recent enough to act on",
                                  labels=["alias"])
        instances = GaugeMetricFamily("llmsched_autoscaler_instances",
                                      "Instances of each alias by state", labels=["alias", "state"])
        now = self.scaler.clock()
        for alias in sorted(self.scaler.view.models):
            view, is_fresh = self.scaler.alias_view(alias, now)
            load.add_metric([alias], view.load)
            inflight.add_metric([alias], view.inflight)
            capacity.add_metric([alias], view.capacity)
            fresh.add_metric([alias], 1 if is_fresh else 0)
            counts = dict.fromkeys(STATES, 0)
            for instance in view.instances:
                counts[instance.state] = counts.get(instance.state, 0) + 1
            for state, count in counts.items():
                instances.add_metric([alias, state], count)
        yield from (load, inflight, capacity, fresh, instances)
