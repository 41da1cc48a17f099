"""Approximate prefix memory: which member was sent which prompt blocks (bounded LRU + TTL).

Every scheduler replica inserts every routed request's block chain (its own routes and the
ones other replicas announce in their selection events), so N replicas remember alike.
It may hold ghosts — blocks the engine has since evicted — which is why it is only a hint
weighed against load, why entries expire, and why each member's share of the memory can be
bounded by its KV cache's size (``member_blocks``): the engine evicts least recently used
blocks, tail blocks of a chain first, and so does this memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence


class PrefixMemory:
    """Block hash → {member: last routed at}, least recently routed blocks leave first."""

    def __init__(self, max_blocks: int = 200_000, ttl_s: float = 600.0,
                 max_members_per_block: int = 8, member_blocks: int | None = None) -> None:
        self.max_blocks = max_blocks
        self.ttl_s = ttl_s
        self.max_members_per_block = max_members_per_block
        self.member_blocks = member_blocks
        """Blocks remembered per member at most (its KV cache's size); None: no bound."""
        self._blocks: OrderedDict[int, dict[str, float]] = OrderedDict()
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def insert(self, member: str, hashes: Sequence[int], now: float) -> None:
        """``member`` was sent a prompt with these blocks."""
        blocks = self._blocks
        lru = self._lru.setdefault(member, OrderedDict())
        for h in reversed(hashes):  # the chain's root ends most recent: tails leave first
            holders = blocks.get(h)
            if holders is None:
                blocks[h] = {member: now}
            else:
                blocks.move_to_end(h)
                holders[member] = now
                if len(holders) > self.max_members_per_block:
                    self._drop(min(holders, key=holders.__getitem__), h)
            lru[h] = None
            lru.move_to_end(h)
        cap = self.member_blocks
        while cap is not None and len(lru) > cap:
            self._drop(member, next(iter(lru)))
        while len(blocks) > self.max_blocks:
            h, holders = blocks.popitem(last=False)
            for m in holders:
                self._lru.get(m, OrderedDict()).pop(h, None)

    def _drop(self, member: str, h: int) -> None:
        holders = self._blocks.get(h)
        if holders is not None:
            holders.pop(member, None)
            if not holders:
                del self._blocks[h]
        lru = self._lru.get(member)
        if lru is not None:
            lru.pop(h, None)

    def match(self, hashes: Sequence[int], now: float,
              members: Collection[str] | None = None) -> dict[str, int]:
        """Per member, how many leading blocks of ``hashes`` it was sent (members with none
        are left out)."""
        out: dict[str, int] = {}
        alive: set[str] | None = None
        oldest = now - self.ttl_s
        blocks = self._blocks
        for depth, h in enumerate(hashes, start=1):
            holders = blocks.get(h)
            if not holders:
                break
            here = {m for m, at in holders.items() if at >= oldest
                    and (members is None or m in members)}
            alive = here if alive is None else alive & here
            if not alive:
                break
            for m in alive:
                out[m] = depth
        return out

    def held(self, member: str) -> int:
        """Blocks remembered for ``member``."""
        return len(self._lru.get(member, ()))

    def forget_member(self, member: str) -> None:
        """A member left the pool: its blocks say nothing anymore."""
        for h in list(self._lru.pop(member, OrderedDict())):
            holders = self._blocks.get(h)
            if holders is not None:
                holders.pop(member, None)
                if not holders:
                    del self._blocks[h]
