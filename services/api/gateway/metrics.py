"""The gateway's own series: requests by status, TTFT, e2e, retries, its waiting lines.

Per request: one count and, for a request an engine answered, one TTFT and one e2e
observation, kept as plain numbers (:class:`RequestSeries`) and turned into Prometheus
families only when scraped: prometheus_client's counters and histograms take a lock per
update, about 1.2 µs of the request path's CPU.
Labels: ``model`` is the alias (empty when the request named no known model), ``code`` the
HTTP status the client got (499: it left before an answer started).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shared.metrics import LATENCY_BUCKETS_S, LLM_BUCKETS_S
from shared.scheduling.decide import answer_kind

REJECTIONS = frozenset({"too_many_requests", "queue_full", "overloaded", "no_capacity"})
"""Error codes that mean "no room now": the process's bound, a full or timed-out admission
line (every member busy), a full or timed-out hold (nothing awake)."""
QUEUES = ("hold", "admission")


class GatewayMetrics:
    """``llmsched_gateway_*``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series = RequestSeries()
        registry.register(self._series)
        self._decisions = DecisionSeries()
        registry.register(self._decisions)
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

    def request(self, model: str, code: int, ttft_s: float | None, e2e_s: float) -> None:
        """One request ended with ``code``; ``ttft_s`` is None when no engine answered it."""
        self._series.request(model, code, ttft_s, e2e_s)

    def decided(self, answer: str, reason: str) -> None:
        """One route decision taken in this process (``gateway.decide: local``)."""
        self._decisions.decided(answer, reason)

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


_LE = (*map(floatToGoString, LLM_BUCKETS_S), "+Inf")
"""The ``le`` labels of the request latency histograms."""


class _Histogram:
    """Bucket counts over ``LLM_BUCKETS_S`` (the last one +Inf) and the sum of one label set."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_LE)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LLM_BUCKETS_S, value)] += 1  # le: value <= bound
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        return list(zip(_LE, accumulate(self.counts), strict=True))


class RequestSeries(Collector):
    """``llmsched_gateway_requests_total`` and the TTFT and e2e histograms: plain counts on
    the request path (one event loop, no lock needed), Prometheus families when scraped."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, int], int] = {}
        self._latency: dict[str, tuple[_Histogram, _Histogram]] = {}

    def request(self, model: str, code: int, ttft_s: float | None, e2e_s: float) -> None:
        key = (model, code)
        self._done[key] = self._done.get(key, 0) + 1
        if ttft_s is None:
            return
        latency = self._latency.get(model)
        if latency is None:
            latency = self._latency[model] = (_Histogram(), _Histogram())
        latency[0].observe(ttft_s)
        latency[1].observe(e2e_s)

    def collect(self) -> list[Metric]:
        done = CounterMetricFamily("llmsched_gateway_requests",
                                   "Gateway chat/completions requests by final status",
                                   labels=["model", "code"])
        for (model, code), count in list(self._done.items()):
            done.add_metric([model, str(code)], count)
        ttft = HistogramMetricFamily("llmsched_gateway_ttft_seconds",
                                     "Time from a request's arrival to the first byte relayed "
                                     "(hold and admission waits included)", labels=["model"])
        e2e = HistogramMetricFamily("llmsched_gateway_e2e_seconds",
                                    "Time from a request's arrival to the end of the relayed "
                                    "answer", labels=["model"])
        for model, (first, whole) in list(self._latency.items()):
            ttft.add_metric([model], first.cumulative(), first.total)
            e2e.add_metric([model], whole.cumulative(), whole.total)
        return [done, ttft, e2e]


class DecisionSeries(Collector):
    """``llmsched_gateway_decisions_total``: the route decisions this process took itself,
    by answer kind and reason, as the scheduler counts its own (plain counts per decision,
    a family when scraped)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def decided(self, answer: str, reason: str) -> None:
        key = (answer_kind(answer), reason)
        self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily("llmsched_gateway_decisions",
                                     "Route decisions taken in this API process "
                                     "(gateway.decide: local) by answer kind (member, none, "
                                     "fallback, busy) and reason", labels=["answer", "reason"])
        for (answer, reason), count in list(self._counts.items()):
            family.add_metric([answer, reason], count)
        return [family]


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
