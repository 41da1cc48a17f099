"""vLLM's KV-event wire format on real captured frames, and the collector's mirror of a cache."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from services.collector.kv_mirror import Changes, MemberMirror
from shared.prefix import token_block_keys
from shared.prefix_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    WireError,
    decode_batch,
    decode_seq,
    encode_frames,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vllm_kv_events"
LIVE = [f"live-seq{n:02d}" for n in range(3, 11)]
REPLAY = [f"replay-seq{n:02d}" for n in range(3)]


def frames(name: str) -> list[bytes]:
    return [(FIXTURES / f"{name}.{part}").read_bytes() for part in ("topic", "seq", "payload")]


@pytest.mark.parametrize("name", LIVE + REPLAY)
def test_real_frames_decode_and_reencode_byte_for_byte(name: str) -> None:
    topic, seq, payload = frames(name)
    batch = decode_batch(payload)
    assert topic == b""
    assert decode_seq(seq) == int(name[-2:])
    assert batch.data_parallel_rank == 0 and batch.ts > 1.7e9
    stored = [e for e in batch.events if isinstance(e, BlockStored)]
    assert len(stored) == 1, batch.events
    assert stored[0].block_size == 128 and stored[0].parent_block_hash is None
    assert len(stored[0].token_ids) == 128 * len(stored[0].block_hashes)
    assert stored[0].token_ids[0] == 101  # [CLS]: the tiny model's BERT tokenizer
    again = encode_frames("", decode_seq(seq), batch)
    assert again == [topic, seq, payload], "the simulator must send exactly vLLM's bytes"


def test_removals_in_the_live_frames() -> None:
    batch = decode_batch(frames("live-seq08")[2])
    kinds = [type(e).__name__ for e in batch.events]
    assert kinds == ["BlockRemoved", "BlockRemoved", "BlockStored"]
    removed = batch.events[0]
    assert isinstance(removed, BlockRemoved) and removed.medium == "GPU"


def test_replay_end_marker_and_bad_frames() -> None:
    assert decode_seq((FIXTURES / "replay-end.seq").read_bytes()) == -1
    with pytest.raises(WireError):
        decode_seq(b"\x00\x01")
    with pytest.raises(WireError):
        decode_batch(b"\x93not msgpack")


def replay_all(mirror: MemberMirror, names: list[str]) -> Changes:
    changes = Changes()
    for name in names:
        _topic, seq, payload = frames(name)
        verdict = mirror.classify(decode_seq(seq), zlib.crc32(payload))
        assert verdict in ("first", "next"), (name, verdict)
        mirror.apply(decode_seq(seq), zlib.crc32(payload), decode_batch(payload), changes)
    return changes


def test_mirror_keys_blocks_by_content_and_follows_evictions() -> None:
    mirror = MemberMirror()
    changes = replay_all(mirror, REPLAY + LIVE)
    stored = {e.block_hashes[0]: e for name in REPLAY + LIVE
              for e in decode_batch(frames(name)[2]).events if isinstance(e, BlockStored)}
    first = decode_batch(frames("live-seq10")[2]).events[-1]
    assert isinstance(first, BlockStored)
    expected = token_block_keys(first.token_ids, 128)
    held = mirror.held()
    assert set(expected) <= held, "a prompt's blocks are found by its tokens"
    removed_hashes = [h for name in LIVE for e in decode_batch(frames(name)[2]).events
                      if isinstance(e, BlockRemoved) for h in e.block_hashes]
    assert len(removed_hashes) == 6 and len(changes.removed) == 6
    for h in removed_hashes:
        assert h not in mirror.keys, "an evicted block is never matched again"
    assert len(held) == 2 * 8 + 1 + 1 + 2 - 6, (len(held), len(stored))


def test_mirror_tells_next_gap_restart_and_duplicate() -> None:
    mirror = MemberMirror()
    p3 = frames("live-seq03")[2]
    p4 = frames("live-seq04")[2]
    mirror.apply(3, zlib.crc32(p3), decode_batch(p3), Changes())
    assert mirror.classify(4, zlib.crc32(p4)) == "next"
    assert mirror.classify(6, zlib.crc32(p4)) == "gap"
    assert mirror.classify(3, zlib.crc32(p3)) == "duplicate"
    assert mirror.classify(0, zlib.crc32(p4)) == "restart"


def test_blocks_whose_parent_is_unknown_are_never_matched() -> None:
    mirror = MemberMirror()
    tokens = list(range(32))
    orphan = BlockStored(block_hashes=[11, 12], parent_block_hash=99, token_ids=tokens,
                         block_size=16)
    changes = Changes()
    mirror.apply(0, 0, EventBatch(ts=0.0, events=[orphan]), changes)
    assert changes.stored == [] and mirror.held() == set()
    assert mirror.keys == {11: None, 12: None}
    child = BlockStored(block_hashes=[13], parent_block_hash=12, token_ids=tokens[:16],
                        block_size=16)
    mirror.apply(1, 1, EventBatch(ts=0.0, events=[child, AllBlocksCleared()]), changes)
    assert changes.cleared and mirror.keys == {}
