"""KV-cache events: vLLM's ZMQ wire format, and the compact form the collector puts on NATS.

vLLM (``vllm/distributed/kv_events.py``) publishes multipart messages ``(topic, seq,
payload)``: ``seq`` an 8-byte big-endian counter, ``payload`` the msgpack of an
``EventBatch`` — an array ``[ts, events, data_parallel_rank]`` whose events are maps tagged
by ``type``: ``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``. Unknown fields are
ignored, so newer vLLM versions that add fields still decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.subjects import token

BlockHash = int | bytes
REPLAY_END = -1
"""The seq of the replay answer's end marker."""


class BlockStored(msgspec.Struct, tag=True, kw_only=True):
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None = None
    token_ids: list[int] = []
    block_size: int = 16
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None


class BlockRemoved(msgspec.Struct, tag=True, kw_only=True):
    block_hashes: list[BlockHash]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, kw_only=True):
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


class WireError(ValueError):
    """A frame that is not a KV-event message."""


_batch_decoder = msgspec.msgpack.Decoder(EventBatch)
_encoder = msgspec.msgpack.Encoder()


def decode_seq(frame: bytes) -> int:
    """The 8-byte big-endian signed seq frame (the replay's end marker is -1)."""
    if len(frame) != 8:
        raise WireError(f"seq frame has {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big", signed=True)


def decode_batch(payload: bytes) -> EventBatch:
    """An EventBatch from its msgpack payload; WireError when it is not one."""
    try:
        return _batch_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise WireError(f"not a KV event batch: {err}") from None


def encode_frames(topic: str, seq: int, batch: EventBatch) -> list[bytes]:
    """The multipart message vLLM's publisher sends for ``batch``."""
    return [topic.encode(), seq.to_bytes(8, "big", signed=True), _encoder.encode(batch)]


class KvUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What one engine's KV cache gained and lost, keyed by content (``kv.events.<pool>``).

    ``stored``/``removed`` are token-block keys (``shared.prefix.token_block_keys`` of the
    blocks' token ids), not the engine's hashes, so the router can compute them from a
    request. ``seq`` counts this collector's updates for the member from 1 within ``epoch``;
    a replica that sees a gap or a new epoch clears what it knew of the member first.
    """

    pool: str
    partition: str
    member: str
    epoch: str
    seq: int
    stored: list[int] = []
    removed: list[int] = []
    cleared: bool = False
    """The member's cache is to be forgotten before ``stored`` applies (engine restarted,
    events lost beyond replay, or the engine cleared its cache)."""
    block_size: int = 0
    at: float = 0.0


def kv_subject(prefix: str, partition: str, pool: str) -> str:
    """The NATS subject of a pool's KV updates."""
    return f"{prefix}.kv.events.{token(partition)}.{token(pool)}"


def kv_subject_all(prefix: str) -> str:
    return f"{prefix}.kv.events.>"
