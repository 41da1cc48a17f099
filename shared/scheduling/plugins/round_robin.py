"""Round-robin picker: members in turn, by key, whatever their load (seed 004)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(slots=True)
class RoundRobinPicker:
    """The next member (by key order) after the last one picked, among positive scores.

    Turns follow keys, not list positions, so a member joining or leaving does not make
    another one lose or repeat its turn. Each scheduler replica keeps its own turn.
    """

    name: str = "round_robin"
    last: str | None = None
    """The key picked last."""

    def pick(self, ctx: DecisionContext, members: list[MemberState],
             scores: list[float]) -> MemberState | None:
        chosen = _after(self.last, members, scores)
        if chosen is not None:
            self.last = chosen.key
        return chosen

    def pick_many(self, ctx: DecisionContext, members: list[MemberState],
                  scores: list[float], n: int) -> list[MemberState | None]:
        """``n`` turns from the current one, without moving the real turn (simulate)."""
        out: list[MemberState | None] = []
        last = self.last
        for _ in range(n):
            chosen = _after(last, members, scores)
            out.append(chosen)
            if chosen is not None:
                last = chosen.key
        return out


def _after(last: str | None, members: list[MemberState],
           scores: list[float]) -> MemberState | None:
    ready = sorted((m for m, s in zip(members, scores, strict=True) if s > 0),
                   key=lambda m: m.key)
    if not ready:
        return None
    if last is not None:
        for member in ready:
            if member.key > last:
                return member
    return ready[0]
