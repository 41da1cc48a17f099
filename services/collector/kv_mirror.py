"""One engine's KV cache as its events tell it: engine block hash → content key (pure, no I/O).

Content keys are ``shared.prefix.token_block_keys`` of each block's token ids, chained
through the parent block's key, so a router computes the same key from a request's tokens.
A block whose parent was stored before we listened (or that carries multimodal extra keys)
has no computable key: it is remembered as unknown and never matched — a miss, never a
ghost. The seq decides what a batch means: the next one applies; an older one means the
engine restarted (its cache is gone); a jump means batches were lost.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from shared.prefix import token_block_keys
from shared.prefix_events import AllBlocksCleared, BlockHash, BlockRemoved, EventBatch

Verdict = Literal["next", "first", "duplicate", "restart", "gap"]
RECENT_BATCHES = 4096
"""Seqs (and payload digests) remembered to tell a replayed duplicate from a restart."""


@dataclass
class Changes:
    """What a batch (or several) did to the cache, in content keys."""

    stored: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    cleared: bool = False

    def clear(self) -> None:
        self.stored.clear()
        self.removed.clear()
        self.cleared = True

    def empty(self) -> bool:
        return not (self.stored or self.removed or self.cleared)


@dataclass
class MemberMirror:
    """The cache of one engine (one data-parallel rank) as learned from its events."""

    keys: dict[BlockHash, int | None] = field(default_factory=dict)
    """Engine hash → content key (None: held, but its content is unknown to us)."""
    last_seq: int | None = None
    recent: OrderedDict[int, int] = field(default_factory=OrderedDict)
    """seq → digest of the payload applied (duplicates from a replay are skipped)."""
    block_size: int = 0

    def classify(self, seq: int, digest: int) -> Verdict:
        """What a batch with ``seq`` (and payload ``digest``) is, given what was applied."""
        last = self.last_seq
        if last is None:
            return "first"
        if seq == last + 1:
            return "next"
        if seq <= last:
            return "duplicate" if self.recent.get(seq) == digest else "restart"
        return "gap"

    def forget(self, changes: Changes) -> None:
        """The engine's cache is gone (restart, lost events without replay, cleared)."""
        self.keys.clear()
        changes.clear()

    def reset_seq(self) -> None:
        self.last_seq = None
        self.recent.clear()

    def apply(self, seq: int, digest: int, batch: EventBatch, changes: Changes) -> None:
        """Apply one batch in order; its effect is appended to ``changes``."""
        self.last_seq = seq
        self.recent[seq] = digest
        while len(self.recent) > RECENT_BATCHES:
            self.recent.popitem(last=False)
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                self.forget(changes)
            elif isinstance(event, BlockRemoved):
                for h in event.block_hashes:
                    key = self.keys.pop(h, None)
                    if key is not None:
                        changes.removed.append(key)
            else:
                self.block_size = event.block_size
                known = len(event.token_ids) >= len(event.block_hashes) * event.block_size
                if event.extra_keys and any(k is not None for k in event.extra_keys):
                    known = False  # multimodal/salted blocks: text tokens alone don't name them
                parent: int | None = 0
                if event.parent_block_hash is not None:
                    parent = self.keys.get(event.parent_block_hash)
                keys: list[int | None]
                if known and parent is not None:
                    extra = b"" if event.lora_id is None else f"lora:{event.lora_id}".encode()
                    keys = list(token_block_keys(event.token_ids, event.block_size, parent,
                                                 len(event.block_hashes), extra))
                else:
                    keys = [None] * len(event.block_hashes)
                for h, key in zip(event.block_hashes, keys, strict=False):
                    old = self.keys.get(h)
                    if old is not None and old != key:
                        changes.removed.append(old)
                    self.keys[h] = key
                    if key is not None:
                        changes.stored.append(key)

    def held(self) -> set[int]:
        """Content keys of the blocks held now."""
        return {k for k in self.keys.values() if k is not None}
