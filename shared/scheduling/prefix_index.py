"""Precise prefix index: the KV blocks each engine holds, as its KV-cache events tell.

Fed by the collector's ``KvUpdate`` messages (content keys of blocks stored and removed).
Every replica applies every update; a replica that sees a new epoch or a gap in a member's
seq forgets that member and relearns from the next updates: it may miss blocks for a while,
but never routes on a block the engine no longer holds.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from shared.prefix_events import KvUpdate

log = logging.getLogger("llmsched.scheduler.prefix")


@dataclass
class _Member:
    epoch: str = ""
    seq: int = 0
    keys: set[int] = field(default_factory=set)
    block_size: int = 0


class PrefixIndex:
    """Member → held block keys, and key → holders, for one pool."""

    def __init__(self) -> None:
        self.members: dict[str, _Member] = {}
        self._holders: dict[int, set[str]] = {}
        self.resyncs = 0

    def apply(self, update: KvUpdate) -> None:
        """One update, in the order the collector published them."""
        state = self.members.setdefault(update.member, _Member())
        in_order = update.epoch == state.epoch and update.seq == state.seq + 1
        if update.cleared or not in_order:
            if not update.cleared and state.keys:
                self.resyncs += 1
                log.info("KV updates of %s: %s (epoch %s seq %d after epoch %s seq %d); its "
                         "blocks are forgotten and relearnt", update.member,
                         "new epoch" if update.epoch != state.epoch else "gap", update.epoch,
                         update.seq, state.epoch or "-", state.seq)
            self._drop(update.member, state)
        state.epoch, state.seq = update.epoch, update.seq
        if update.block_size:
            state.block_size = update.block_size
        holders = self._holders
        for key in update.removed:
            if key in state.keys:
                state.keys.discard(key)
                owners = holders.get(key)
                if owners is not None:
                    owners.discard(update.member)
                    if not owners:
                        del holders[key]
        for key in update.stored:
            if key not in state.keys:
                state.keys.add(key)
                holders.setdefault(key, set()).add(update.member)

    def _drop(self, member: str, state: _Member) -> None:
        holders = self._holders
        for key in state.keys:
            owners = holders.get(key)
            if owners is not None:
                owners.discard(member)
                if not owners:
                    del holders[key]
        state.keys = set()

    def forget_member(self, member: str) -> None:
        state = self.members.pop(member, None)
        if state is not None:
            self._drop(member, state)

    def match(self, keys: Sequence[int], members: Collection[str] | None = None
              ) -> dict[str, int]:
        """Per member, how many leading blocks of ``keys`` it holds (none: left out)."""
        out: dict[str, int] = {}
        alive: set[str] | None = None
        holders = self._holders
        for depth, key in enumerate(keys, start=1):
            owners = holders.get(key)
            if not owners:
                break
            here = owners if members is None else {m for m in owners if m in members}
            alive = set(here) if alive is None else alive & here
            if not alive:
                break
            for m in alive:
                out[m] = depth
        return out

    def held(self, member: str) -> int:
        state = self.members.get(member)
        return 0 if state is None else len(state.keys)

    def block_size(self, member: str) -> int:
        state = self.members.get(member)
        return 0 if state is None else state.block_size
