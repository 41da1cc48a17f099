"""The gateway's own series: requests by status, TTFT, e2e, retries, its waiting lines.

Per request: one counter increment and, for a request an engine answered, one TTFT and one
e2e observation, on children bound on first use (one dict lookup, no label parsing).
Labels: ``model`` is the alias (empty when the request named no known model), ``code`` the
HTTP status the client got (499: it left before an answer started).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.metrics import LATENCY_BUCKETS_S, LLM_BUCKETS_S

REJECTIONS = frozenset({"too_many_requests", "queue_full", "overloaded", "no_capacity"})
"""Error codes that mean "no room now": the process's bound, a full or timed-out admission
line (every member busy), a full or timed-out hold (nothing awake)."""
QUEUES = ("hold", "admission")


class GatewayMetrics:
    """``llmsched_gateway_*``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter("llmsched_gateway_requests_total",
                                 "Gateway chat/completions requests by final status",
                                 ["model", "code"], registry=registry)
        self._ttft = Histogram("llmsched_gateway_ttft_seconds",
                               "Time from a request's arrival to the first byte relayed "
                               "(hold and admission waits included)", ["model"],
                               buckets=LLM_BUCKETS_S, registry=registry)
        self._e2e = Histogram("llmsched_gateway_e2e_seconds",
                              "Time from a request's arrival to the end of the relayed answer",
                              ["model"], buckets=LLM_BUCKETS_S, registry=registry)
        self._retries = Counter("llmsched_gateway_retries_total",
                                "Attempts made again on another instance after a failure "
                                "before the first byte", ["model"], registry=registry)
        self._rejections = Counter("llmsched_gateway_rejections_total",
                                   "Requests refused for lack of room, by error code "
                                   "(too_many_requests, queue_full, overloaded, no_capacity)",
                                   ["model", "reason"], registry=registry)
        self._queued = Gauge("llmsched_gateway_queued_requests",
                             "Requests waiting in this process: hold (nothing awake) or "
                             "admission (every member busy)", ["model", "queue"],
                             registry=registry)
        self._wait = Histogram("llmsched_gateway_queue_wait_seconds",
                               "Time a request spent in the hold or admission line",
                               ["model", "queue"], buckets=LATENCY_BUCKETS_S + LLM_BUCKETS_S[7:],
                               registry=registry)
        self._done: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, tuple[Histogram, Histogram]] = {}

    def request(self, model: str, code: int, ttft_s: float | None, e2e_s: float) -> None:
        """One request ended with ``code``; ``ttft_s`` is None when no engine answered it."""
        done = self._done.get((model, code))
        if done is None:
            done = self._done[(model, code)] = self._requests.labels(model, str(code))
        done.inc()
        if ttft_s is None:
            return
        latency = self._latency.get(model)
        if latency is None:
            latency = self._latency[model] = (self._ttft.labels(model), self._e2e.labels(model))
        latency[0].observe(ttft_s)
        latency[1].observe(e2e_s)

    def rejected(self, model: str, code: str | None) -> None:
        """A request refused with error ``code``, if that code means "no room"."""
        if code in REJECTIONS:
            self._rejections.labels(model, code).inc()

    def retried(self, model: str) -> None:
        self._retries.labels(model).inc()

    def queued(self, model: str, queue: str) -> None:
        """A request joined the ``queue`` line (hold or admission)."""
        self._queued.labels(model, queue).inc()

    def dequeued(self, model: str, queue: str, waited_s: float) -> None:
        """A request left the ``queue`` line after ``waited_s``."""
        self._queued.labels(model, queue).dec()
        self._wait.labels(model, queue).observe(waited_s)


class OngoingCollector(Collector):
    """``llmsched_gateway_ongoing_requests``: read when scraped, nothing on the request path."""

    def __init__(self, ongoing: Callable[[], int], limit: Callable[[], int]) -> None:
        self.ongoing = ongoing
        self.limit = limit

    def collect(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("llmsched_gateway_ongoing_requests",
                                  "Gateway requests this process serves now (held included)",
                                  value=self.ongoing()),
                GaugeMetricFamily("llmsched_gateway_max_ongoing_requests",
                                  "The process's bound (gateway.max_ongoing_requests)",
                                  value=self.limit())]
