"""The worker's own series, read from its instance table when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from services.worker.instances import InstanceManager
from services.worker.models import InstanceState

STATES: tuple[str, ...] = get_args(InstanceState)


class WorkerCollector(Collector):
    """``llmsched_worker_*``: instances by model and state, the proxy's requests in flight."""

    def __init__(self, manager: InstanceManager, worker_id: str) -> None:
        self.manager = manager
        self.worker_id = worker_id

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        yield InfoMetricFamily("llmsched_worker", "This worker agent",
                               value={"worker_id": self.worker_id})
        instances = GaugeMetricFamily("llmsched_worker_instances",
                                      "Engine instances on this worker by model alias and "
                                      "state", labels=["model", "state"])
        inflight = GaugeMetricFamily("llmsched_worker_inflight_requests",
                                     "Requests the worker's proxy holds per instance's model",
                                     labels=["model"])
        counts: dict[tuple[str, str], int] = {}
        proxied: dict[str, int] = {}
        for inst in list(self.manager.instances.values()):
            model = inst.spec.alias
            for state in STATES:  # every state present, so a dashboard sees zeros
                counts.setdefault((model, state), 0)
            counts[(model, inst.state)] += 1
            proxied[model] = proxied.get(model, 0) + inst.stats.inflight
        for labels, count in sorted(counts.items()):
            instances.add_metric(list(labels), count)
        for model, count in sorted(proxied.items()):
            inflight.add_metric([model], count)
        yield instances
        yield inflight
