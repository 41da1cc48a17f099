"""What routed requests teach the scheduler: in-flight counts, TTFTs, failures.

Every replica applies every selection (with the features it was routed on) and every
outcome, so all replicas hold the same in-flight counts, the same predictor and the same
circuit states. Each request's TTFT is joined with the state it was routed on; the
joined records are kept (bounded) for export.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.config import CircuitConfig
from shared.routing import OutcomeEvent, SelectionEvent
from shared.scheduling.inflight import InflightTracker, MemberIdent
from shared.scheduling.predictor import FEATURES, PredictorSettings, TtftPredictor
from shared.scheduling.view import ClusterView, MemberState

log = logging.getLogger("llmsched.scheduler.feedback")

RECORDS_KEPT = 5000
"""Joined records kept per pool for export."""


@dataclass(slots=True)
class Routed:
    """A routed request waiting for its outcome."""

    member: MemberIdent
    features: tuple[float, ...]
    predicted: float | None
    at: float


class Feedback:
    """In-flight tracker, predictors per pool, circuit breakers and joined records."""

    def __init__(self, view: ClusterView, clock: Callable[[], float]) -> None:
        self.view = view
        self.clock = clock
        self.inflight = InflightTracker()
        self.predictors: dict[tuple[str, str], TtftPredictor] = {}
        self.circuits: dict[tuple[str, str], CircuitConfig] = {}
        self.records: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._routed: dict[str, Routed] = {}
        self.on_learned: Callable[[tuple[str, str], float | None, float], None] | None = None
        """Told each TTFT learned: (pool, predicted when routed, observed)."""

    # -- configuration -------------------------------------------------------------------
    def configure(self, pool: tuple[str, str], predictor: PredictorSettings | None,
                  circuit: CircuitConfig | None) -> None:
        """A greybox pool learns and breaks circuits; other pools only count in flight."""
        if predictor is None:
            self.predictors.pop(pool, None)
        else:
            old = self.predictors.get(pool)
            if old is None or old.settings != predictor:
                fresh = TtftPredictor(predictor)
                if old is not None:
                    fresh.models = old.models
                self.predictors[pool] = fresh
        if circuit is None:
            self.circuits.pop(pool, None)
        else:
            self.circuits[pool] = circuit

    # -- members ---------------------------------------------------------------------------
    def member(self, ident: MemberIdent) -> MemberState | None:
        pool = self.view.pools.get((ident[0], ident[1]))
        return None if pool is None else pool.members.get(ident[2])

    def sync(self, ident: MemberIdent) -> None:
        member = self.member(ident)
        if member is not None:
            member.inflight = self.inflight.count(ident)

    # -- events ----------------------------------------------------------------------------
    def routed(self, request_id: str, ident: MemberIdent, ttl_s: float,
               features: tuple[float, ...] = (), predicted: float | None = None,
               at: float | None = None) -> bool:
        """Count a routed request (this replica's or another's); False when already known."""
        now = self.clock() if at is None else at
        if not self.inflight.add(request_id, ident, now, ttl_s):
            return False
        if features:
            self._routed[request_id] = Routed(ident, features, predicted, now)
        self.sync(ident)
        return True

    def selection(self, event: SelectionEvent, own_replica: str) -> None:
        if event.replica == own_replica:
            return
        self.routed(event.request_id, (event.pool, event.partition, event.member), event.ttl_s,
                    tuple(event.features), event.predicted_ttft_s, event.at)

    def outcome(self, event: OutcomeEvent) -> None:
        """A request ended: it leaves the count, teaches the predictor, feeds the breaker.

        A report without request id (the F5 iRule's) names only the member: it takes the
        member's oldest select. A failure ends it at once; a success may come at the
        engine's response headers, when the request has only started, so the select keeps
        counting until a scrape shows the engine holding it (see :meth:`settle`).
        """
        now = self.clock()
        ok = 200 <= event.status < 400 and event.error is None
        member = (event.pool, event.partition, event.member)
        if event.request_id:
            entry = self.inflight.done(event.request_id, now)
        elif ok:
            entry = self.inflight.report_oldest(member, event.at or now)
        else:
            entry = self.inflight.done_oldest(member)
        ident = entry.member if entry is not None else member
        if entry is not None:
            self.sync(ident)
            if entry.reported_at is not None:  # its scrape may have come before the report
                self._settle_member(ident, self.member(ident))
        routed = self._routed.pop(entry.request_id, None) if entry is not None else None
        if (routed is not None and ok and event.ttft_at == "first_token"
                and (event.upstream_ttft_s or event.ttft_s) is not None):
            self._learn(ident, routed, event, now)
        if event.final or not ok:
            self._breaker(ident, ok, now)

    def settle(self, pool: tuple[str, str], now: float, wait_s: float) -> None:
        """Reported selects of ``pool`` whose member was scraped since, or that waited
        ``wait_s`` for a scrape in vain, leave the count."""
        reported = self.inflight.reported(*pool)
        if not reported:
            return
        state = self.view.pools.get(pool)
        for key in list(reported):
            member = None if state is None else state.members.get(key)
            self._settle_member((pool[0], pool[1], key), member, now - wait_s)

    def _settle_member(self, ident: MemberIdent, member: MemberState | None,
                       reported_before: float = float("-inf")) -> None:
        scraped_at = None if member is None else member.metrics_at
        if self.inflight.settle(ident, scraped_at, reported_before) and member is not None:
            member.inflight = self.inflight.count(ident)

    def _learn(self, ident: MemberIdent, routed: Routed, event: OutcomeEvent,
               now: float) -> None:
        pool = (ident[0], ident[1])
        predictor = self.predictors.get(pool)
        ttft = event.upstream_ttft_s if event.upstream_ttft_s is not None else event.ttft_s
        if predictor is None or ttft is None:
            return
        predictor.learn(ident, routed.features, ttft)
        if self.on_learned is not None:
            self.on_learned(pool, routed.predicted, ttft)
        records = self.records.setdefault(pool, deque(maxlen=RECORDS_KEPT))
        records.append({"at": round(routed.at, 3), "member": ident[2],
                        "ttft_s": round(ttft, 4),
                        "predicted_ttft_s": None if routed.predicted is None
                        else round(routed.predicted, 4),
                        "e2e_s": None if event.e2e_s is None else round(event.e2e_s, 4),
                        **{name: round(v, 4) for name, v in zip(FEATURES[1:],
                                                                routed.features[1:],
                                                                strict=True)}})

    def _breaker(self, ident: MemberIdent, ok: bool, now: float) -> None:
        settings = self.circuits.get((ident[0], ident[1]))
        member = self.member(ident)
        if settings is None or member is None:
            return
        if ok:
            member.consecutive_failures = 0
            if member.circuit == "half_open":
                member.trial_successes += 1
                if member.trial_successes >= settings.successes:
                    member.circuit = "closed"
                    log.info("Pool %s:%s member %s circuit closed after %d good requests",
                             ident[0], ident[1], ident[2], member.trial_successes)
            return
        member.consecutive_failures += 1
        opening = (member.circuit == "half_open"
                   or (member.circuit == "closed"
                       and member.consecutive_failures >= settings.failures))
        if opening:
            member.circuit, member.open_until = "open", now + settings.open_s
            log.warning("Pool %s:%s member %s circuit open for %.0fs after %d failed "
                        "request(s)", ident[0], ident[1], ident[2], settings.open_s,
                        member.consecutive_failures)

    def expire(self) -> int:
        """Requests whose outcome never came stop counting; returns how many."""
        now = self.clock()
        dropped = self.inflight.expire(now)
        for ident in set(dropped):
            self.sync(ident)
        if len(self._routed) > len(self.inflight) + 1000:
            self._routed = {k: v for k, v in self._routed.items() if k in self.inflight}
        return len(dropped)
