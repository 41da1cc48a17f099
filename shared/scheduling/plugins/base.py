"""The three plugin interfaces and the context a decision runs in."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from shared.scheduling.plugins.prefix_keys import RequestKeys
from shared.scheduling.predictor import TtftPredictor
from shared.scheduling.view import MemberState


@dataclass(slots=True)
class DecisionContext:
    """Everything a plugin may look at besides the members."""

    pool: str
    partition: str
    now: float
    stale_after_s: float
    rng: random.Random
    debug: bool = False
    prompt_tokens: float = 0.0
    """The request's prompt length, estimated (gateway: from its text; select: unknown, 0)."""
    predictor: TtftPredictor | None = None
    """The pool's TTFT predictor (greybox)."""
    keys: RequestKeys | None = None
    """The request's prefix blocks, session and cached tokens per member (cache-aware)."""
    pool_members: tuple[str, ...] = ()
    """Every member of the pool, sorted (session affinity hashes onto them)."""
    engine_counts: bool = False
    """A select decision (the F5 path): a select counts in flight only until the engine's
    own figures show it (its report, then the next scrape), so load adds the engine's
    running count; on the gateway the router counts every request to its end."""


class Filter(Protocol):
    """Drops members that must not take the request."""

    @property
    def name(self) -> str: ...

    def filter(self, ctx: DecisionContext, members: list[MemberState]) -> list[MemberState]: ...


class Scorer(Protocol):
    """Rates each member in [0, 1] (higher is better); None for one it cannot rate.

    A profile that requires fresh metrics passes only members whose metrics are fresh.
    """

    @property
    def name(self) -> str: ...

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]: ...


class Picker(Protocol):
    """Chooses one member from scored ones, or None when no score is positive."""

    @property
    def name(self) -> str: ...

    def pick(self, ctx: DecisionContext, members: list[MemberState],
             scores: list[float]) -> MemberState | None: ...

    def pick_many(self, ctx: DecisionContext, members: list[MemberState],
                  scores: list[float], n: int) -> list[MemberState | None]:
        """``n`` independent picks over the same scores (simulate/analyze)."""
        ...
