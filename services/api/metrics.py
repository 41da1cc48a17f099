"""The API's own series for the F5 path: select answers by kind and latency, outcome reports.

One counter increment and one histogram observation per select, on children bound once
here, so the fast path does no label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.metrics import LATENCY_BUCKETS_S

ANSWER_KINDS = ("member", "none", "fallback", "busy", "invalid", "unavailable", "error")
"""What a select answered: a member, ``none``, ``fallback``, ``busy``; or a 4xx (invalid),
a 503 (no scheduler answered), another 5xx (error)."""
_WORDS = {b"none": "none", b"fallback": "fallback", b"busy": "busy"}
OUTCOME_RESULTS = ("accepted", "invalid", "unavailable")


class SelectMetrics:
    """``llmsched_api_select_*`` and ``llmsched_api_outcome_reports_total``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        answers = Counter("llmsched_api_select_answers_total",
                          "Select answers of this API process by kind", ["answer"],
                          registry=registry)
        self._answers = {kind: answers.labels(kind) for kind in ANSWER_KINDS}
        self._latency = Histogram("llmsched_api_select_duration_seconds",
                                  "Time from a select's last body byte to its answer",
                                  buckets=LATENCY_BUCKETS_S, registry=registry)
        outcomes = Counter("llmsched_api_outcome_reports_total",
                           "Outcome reports (POST /scheduler/outcome) by result", ["result"],
                           registry=registry)
        self._outcomes = {result: outcomes.labels(result) for result in OUTCOME_RESULTS}

    def select(self, status: int, body: bytes, seconds: float) -> None:
        """One select answered ``status`` with ``body`` after ``seconds``."""
        if status == 200:
            kind = _WORDS.get(body, "member")
        elif status < 500:
            kind = "invalid"
        else:
            kind = "unavailable" if status == 503 else "error"
        self._answers[kind].inc()
        self._latency.observe(seconds)

    def outcome(self, status: int, _body: bytes, _seconds: float) -> None:
        """One outcome report answered ``status``."""
        result = "accepted" if status < 300 else "invalid" if status < 500 else "unavailable"
        self._outcomes[result].inc()
