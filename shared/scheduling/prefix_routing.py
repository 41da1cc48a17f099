"""Cache-aware routing state of a scheduler replica: approximate memory and precise index per pool.

The core asks it for a request's keys (what each candidate holds of the prompt) before
scoring, tells it where a request went, and feeds it every replica's selection events and
the collector's KV updates — so every replica holds the same memory and index.
"""

from __future__ import annotations

from collections.abc import Collection

from shared.prefix import key_hash
from shared.prefix_config import CacheAwareConfig
from shared.prefix_events import KvUpdate
from shared.scheduling.plugins.prefix_keys import RequestKeys
from shared.scheduling.prefix_index import PrefixIndex
from shared.scheduling.prefix_memory import PrefixMemory

Pool = tuple[str, str]


class PrefixRouting:
    """Per pool: the approximate memory and the precise index."""

    def __init__(self) -> None:
        self.settings: dict[Pool, CacheAwareConfig] = {}
        self.memories: dict[Pool, PrefixMemory] = {}
        self.indexes: dict[Pool, PrefixIndex] = {}

    def configure(self, pool: Pool, settings: CacheAwareConfig | None) -> None:
        """A ``cache_aware`` pool remembers; others forget (the index stays: events keep
        coming while a mode changes)."""
        if settings is None:
            self.settings.pop(pool, None)
            self.memories.pop(pool, None)
            return
        self.settings[pool] = settings
        per_member = None
        if settings.member_cache_tokens is not None:
            per_member = max(1, int(settings.member_cache_tokens * settings.chars_per_token
                                    / settings.block_chars))
        memory = self.memories.get(pool)
        if memory is None:
            self.memories[pool] = PrefixMemory(settings.memory_blocks, settings.memory_ttl_s,
                                               member_blocks=per_member)
        else:
            memory.max_blocks, memory.ttl_s = settings.memory_blocks, settings.memory_ttl_s
            memory.member_blocks = per_member

    def enabled(self, pool: Pool) -> bool:
        """Whether ``pool`` routes cache-aware (its requests' keys are worth computing)."""
        return pool in self.settings

    def keys(self, pool: Pool, prefix_hashes: list[int], token_keys: list[int],
             session: str, members: Collection[str], now: float) -> RequestKeys | None:
        """The request's keys with each of ``members``' cached tokens (None: not cache-aware)."""
        settings = self.settings.get(pool)
        if settings is None:
            return None
        keys = RequestKeys(prefix_hashes=prefix_hashes[:settings.max_blocks],
                           token_keys=token_keys, session=session)
        if settings.source == "precise":
            index = self.indexes.get(pool)
            if index is not None and token_keys:
                for member, blocks in index.match(token_keys, members).items():
                    keys.cached_tokens[member] = float(blocks * (index.block_size(member) or 1))
        else:
            memory = self.memories.get(pool)
            if memory is not None and keys.prefix_hashes:
                per_block = settings.block_chars / settings.chars_per_token
                for member, blocks in memory.match(keys.prefix_hashes, now, members).items():
                    keys.cached_tokens[member] = blocks * per_block
        return keys

    @staticmethod
    def select_hashes(prefix_hashes: list[int], prefix_key: str | None) -> list[int]:
        """The chain of an F5 select: the hashes it sent, or one block for its key."""
        if prefix_hashes:
            return prefix_hashes
        return [key_hash(prefix_key)] if prefix_key else []

    def routed(self, pool: Pool, member: str, prefix_hashes: list[int], now: float) -> None:
        """A request with these blocks went to ``member`` (this replica's or another's)."""
        memory = self.memories.get(pool)
        if memory is not None and prefix_hashes:
            memory.insert(member, prefix_hashes, now)

    def apply_kv(self, update: KvUpdate) -> None:
        """A member's engine stored or dropped blocks."""
        pool = (update.pool, update.partition)
        index = self.indexes.get(pool)
        if index is None:
            index = self.indexes[pool] = PrefixIndex()
        index.apply(update)

    def retain(self, pools: Collection[Pool]) -> None:
        """Drop the state of pools that left the config."""
        for table in (self.memories, self.indexes, self.settings):
            for pool in [p for p in table if p not in pools]:
                del table[pool]

    def describe(self, pool: Pool, member: str) -> dict[str, int]:
        """What is known of ``member``'s cache (for status pages)."""
        index = self.indexes.get(pool)
        return {} if index is None else {"held_blocks": index.held(member)}
