"""KV-cache block pool with a prefix cache: full blocks keyed by chained hash, LRU eviction."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol


class CacheListener(Protocol):
    """Told of every block the prefix cache gains or loses (KV-cache events)."""

    def stored(self, block_hash: int) -> None: ...

    def removed(self, block_hash: int) -> None: ...


class BlockPool:
    """Fixed KV blocks; freed blocks holding a hashed prefix stay reusable until evicted."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._ref = [0] * num_blocks
        self._hash_of: dict[int, int] = {}
        self._block_of: dict[int, int] = {}
        self.listener: CacheListener | None = None

    @property
    def num_free(self) -> int:
        """Blocks that can be allocated now (never-used plus evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.num_free / self.num_blocks

    @property
    def num_cached(self) -> int:
        """Blocks currently registered in the prefix cache."""
        return len(self._block_of)

    def match_prefix(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """The cached blocks holding the longest prefix of ``hashes`` (at most ``max_blocks``)."""
        if not self.enable_caching:
            return []
        found: list[int] = []
        block_of = self._block_of
        for h in hashes[:max_blocks]:
            block = block_of.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def free_after_taking(self, blocks: Sequence[int]) -> int:
        """How many blocks would remain allocatable after taking ``blocks``."""
        ref = self._ref
        return self.num_free - sum(1 for b in blocks if ref[b] == 0)

    def take(self, blocks: Sequence[int]) -> None:
        """Add a reference to cached blocks found by :meth:`match_prefix`."""
        ref = self._ref
        for block in blocks:
            if ref[block] == 0:
                del self._evictable[block]
            ref[block] += 1

    def allocate(self, count: int) -> list[int]:
        """``count`` fresh blocks; the caller checked :attr:`num_free`."""
        if count > self.num_free:
            raise ValueError(f"cannot allocate {count} blocks, {self.num_free} free")
        out: list[int] = []
        ref = self._ref
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                self._forget(block)
            ref[block] = 1
            out.append(block)
        return out

    def register(self, block: int, block_hash: int) -> None:
        """Record that ``block`` now holds the full block with ``block_hash``."""
        if not self.enable_caching or block in self._hash_of or block_hash in self._block_of:
            return
        self._hash_of[block] = block_hash
        self._block_of[block_hash] = block
        if self.listener is not None:
            self.listener.stored(block_hash)

    def _forget(self, block: int) -> None:
        block_hash = self._hash_of.pop(block)
        self._block_of.pop(block_hash, None)
        if self.listener is not None:
            self.listener.removed(block_hash)

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; tail blocks become the first to be evicted."""
        ref = self._ref
        for block in reversed(blocks):
            ref[block] -= 1
            if ref[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    def reset_cache(self) -> None:
        """Forget every cached prefix not in use (sleep discards the KV cache)."""
        for block in list(self._evictable):
            self._forget(block)
            self._free.append(block)
        self._evictable.clear()
