"""The precise index heals: a gap, a new epoch or a cleared cache forgets; never a ghost."""

from __future__ import annotations

from shared.prefix_events import KvUpdate
from shared.scheduling.prefix_index import PrefixIndex
from shared.scheduling.prefix_memory import PrefixMemory


def update(member: str, seq: int, *, epoch: str = "e1", stored: list[int] | None = None,
           removed: list[int] | None = None, cleared: bool = False) -> KvUpdate:
    return KvUpdate(pool="p", partition="Common", member=member, epoch=epoch, seq=seq,
                    stored=stored or [], removed=removed or [], cleared=cleared, block_size=16)


def test_longest_held_prefix_per_member() -> None:
    index = PrefixIndex()
    index.apply(update("a", 1, stored=[1, 2, 3]))
    index.apply(update("b", 1, stored=[1, 2]))
    index.apply(update("c", 1, stored=[2, 3]))  # no root block: no prefix
    assert index.match([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert index.match([1, 2, 3], members=["b", "c"]) == {"b": 2}
    assert index.block_size("a") == 16


def test_removed_blocks_are_not_matched() -> None:
    index = PrefixIndex()
    index.apply(update("a", 1, stored=[1, 2, 3]))
    index.apply(update("a", 2, removed=[2]))
    assert index.match([1, 2, 3]) == {"a": 1}


def test_a_gap_forgets_the_member_then_it_relearns() -> None:
    index = PrefixIndex()
    index.apply(update("a", 1, stored=[1, 2, 3]))
    index.apply(update("b", 1, stored=[1]))
    # seq 2 of a (which removed block 1, say) was lost: what a held is no longer known.
    index.apply(update("a", 3, stored=[7]))
    assert index.match([1, 2, 3]) == {"b": 1}, "a lost removal must not leave a ghost"
    assert index.match([7]) == {"a": 1}
    assert index.resyncs == 1
    index.apply(update("a", 4, stored=[1, 2]))
    assert index.match([1, 2, 3]) == {"a": 2, "b": 1}


def test_a_new_epoch_or_a_cleared_cache_forgets() -> None:
    index = PrefixIndex()
    index.apply(update("a", 1, stored=[1, 2]))
    index.apply(update("a", 1, epoch="e2", stored=[5]))  # a re-subscribed collector
    assert index.match([1, 2]) == {} and index.match([5]) == {"a": 1}
    index.apply(update("a", 2, epoch="e2", cleared=True, stored=[9]))  # an engine restart
    assert index.match([5]) == {} and index.match([9]) == {"a": 1}
    index.forget_member("a")
    assert index.match([9]) == {} and index.held("a") == 0


def test_memory_bounded_per_member_drops_tails_first() -> None:
    memory = PrefixMemory(member_blocks=4)
    memory.insert("a", [1, 2, 3], now=0.0)
    memory.insert("a", [10, 11], now=1.0)  # over the bound: the oldest chain's tail goes
    assert memory.match([1, 2, 3], now=2.0) == {"a": 2}
    assert memory.match([10, 11], now=2.0) == {"a": 2}
    assert memory.held("a") == 4


def test_memory_forgets_after_its_ttl_and_bounds_blocks() -> None:
    memory = PrefixMemory(max_blocks=3, ttl_s=10.0)
    memory.insert("a", [1, 2], now=0.0)
    memory.insert("b", [1, 2], now=5.0)
    assert memory.match([1, 2], now=12.0) == {"b": 2}
    memory.insert("c", [7, 8], now=13.0)
    assert len(memory) == 3
