"""The collector's own series: scrape rounds per pool, their failures, F5 fetches, metrics age."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.collector.ownership import PoolOwnership
from shared.messages import MetricsBatch
from shared.metrics import LATENCY_BUCKETS_S

PoolIdent = tuple[str, str]


class CollectorMetrics(Collector):
    """``llmsched_collector_*``; the metrics age gauge is computed when scraped."""

    def __init__(self, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time, *,
                 ownership: PoolOwnership | None = None) -> None:
        self.ownership = ownership
        self.served = 0
        """Pools this collector serves now (the collector keeps it current)."""
        labels = ["pool", "partition"]
        self._duration = Histogram("llmsched_collector_scrape_duration_seconds",
                                   "Time to scrape every available member of a pool once",
                                   labels, buckets=(*LATENCY_BUCKETS_S, 5.0, 10.0),
                                   registry=registry)
        self._scrapes = Counter("llmsched_collector_member_scrapes_total",
                                "Member /metrics scrapes", labels, registry=registry)
        self._errors = Counter("llmsched_collector_scrape_errors_total",
                               "Member /metrics scrapes that failed (timeout, refused, HTTP "
                               "error, no engine metrics)", labels, registry=registry)
        self._fetches = Counter("llmsched_collector_f5_fetches_total",
                                "Pool member fetches from the F5", labels, registry=registry)
        self._fetch_errors = Counter("llmsched_collector_f5_fetch_errors_total",
                                     "Pool member fetches from the F5 that failed", labels,
                                     registry=registry)
        self._last_ok: dict[PoolIdent, dict[str, float]] = {}
        self.clock = clock
        registry.register(self)

    def scraped(self, pool: PoolIdent, batch: MetricsBatch, seconds: float) -> None:
        """One scrape round of ``pool`` took ``seconds``."""
        self._duration.labels(*pool).observe(seconds)
        failed = sum(1 for m in batch.members if not m.ok)
        self._scrapes.labels(*pool).inc(len(batch.members))
        if failed:
            self._errors.labels(*pool).inc(failed)
        before = self._last_ok.get(pool, {})
        self._last_ok[pool] = {m.key: m.scraped_at if m.ok else before[m.key]
                               for m in batch.members if m.ok or m.key in before}

    def fetched(self, pool: PoolIdent, *, failed: bool) -> None:
        """One F5 member fetch of ``pool``."""
        self._fetches.labels(*pool).inc()
        if failed:
            self._fetch_errors.labels(*pool).inc()

    def forget(self, keep: set[PoolIdent]) -> None:
        """Pools no longer scraped leave the age gauge."""
        for pool in [p for p in self._last_ok if p not in keep]:
            del self._last_ok[pool]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily("llmsched_collector_metrics_age_seconds",
                                "Age of the oldest good metrics of a pool's scraped members "
                                "(a member whose scrapes fail grows old)",
                                labels=["pool", "partition"])
        now = self.clock()
        for pool, last in list(self._last_ok.items()):
            if last:
                age.add_metric(list(pool), now - min(last.values()))
        yield age
        yield GaugeMetricFamily("llmsched_collector_pools_served",
                                "Pools this collector fetches and scrapes now (the others are "
                                "another collector's)", value=self.served)
        if self.ownership is not None:
            yield GaugeMetricFamily("llmsched_collector_live_collectors",
                                    "Collectors splitting the pools, as last seen in the state "
                                    "store", value=len(self.ownership.members))
            yield GaugeMetricFamily("llmsched_collector_fail_open",
                                    "1 while the state store is unreachable and this collector "
                                    "scrapes every pool", value=int(self.ownership.fail_open()))
