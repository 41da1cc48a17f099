"""Which live collector owns a pool: rendezvous (highest-random-weight) hashing.

Every collector computes the same answer from the same membership, with no
coordination; when a collector joins or leaves, only the pools it gains or loses move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

PoolIdent = tuple[str, str]
"""(pool name, partition)."""


def weight(collector: str, pool: PoolIdent) -> int:
    """A stable pseudo-random weight of ``collector`` for ``pool`` (same in every process)."""
    name, partition = pool
    digest = hashlib.blake2b(f"{collector}\0{partition}\0{name}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(pool: PoolIdent, collectors: Sequence[str]) -> str | None:
    """The collector with the highest weight for ``pool`` (None without collectors)."""
    if not collectors:
        return None
    return max(collectors, key=lambda c: (weight(c, pool), c))


def owned_by(me: str, pools: Iterable[PoolIdent], collectors: Sequence[str]
             ) -> set[PoolIdent]:
    """The pools ``me`` owns among ``collectors`` (``me`` counts as live)."""
    live = sorted({*collectors, me})
    return {pool for pool in pools if owner(pool, live) == me}
