"""KV-cache events of a simulated engine, in vLLM's wire format (ZMQ PUB + replay ROUTER).

The block pool tells a ``KvEventRecorder`` what it caches and evicts; the recorder turns
that into vLLM's events (``BlockStored`` with the blocks' token ids and parent,
``BlockRemoved``) and the publisher sends one batch per flush as vLLM does: multipart
``(topic, seq, msgpack EventBatch)``. Like vLLM, the PUB socket binds when the endpoint has
a wildcard (``tcp://*:P``) and connects otherwise; the replay ROUTER always binds and
answers ``[b"", start_seq]`` with the buffered batches from that seq, then an end marker.
The simulator's block hashes are its own (they need not equal vLLM's); the format is vLLM's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from services.enginesim.config import EngineConfig
from services.enginesim.kvcache import BlockPool
from shared.prefix_config import expand_endpoint
from shared.prefix_events import (
    BlockRemoved,
    BlockStored,
    EventBatch,
    KVEvent,
    encode_frames,
)

log = logging.getLogger("llmsched.enginesim.kv")

U64 = (1 << 64) - 1
NOTED_BLOCKS = 200_000
"""Token contents remembered for blocks not yet cached (a request's prompt, noted on arrival)."""
REPLAY_BUFFER = 10_000
FLUSH_S = 0.005


@dataclass(frozen=True, slots=True)
class KvEventsSettings:
    """vLLM's ``--kv-events-config`` fields the simulator honours."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


def _u64(h: int) -> int:
    return h & U64


class KvEventRecorder:
    """The block pool's listener: notes prompts' blocks, collects events until taken."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._blocks: OrderedDict[int, tuple[int | None, tuple[int, ...]]] = OrderedDict()
        self.pending: list[KVEvent] = []

    def note(self, token_ids: Sequence[int], hashes: Sequence[int]) -> None:
        """A request arrived: remember the parent and tokens of each of its full blocks."""
        bs = self.block_size
        blocks = self._blocks
        parent: int | None = None
        for i, h in enumerate(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = (parent, tuple(token_ids[i * bs:(i + 1) * bs]))
            parent = h
        while len(blocks) > NOTED_BLOCKS:
            blocks.popitem(last=False)

    def stored(self, block_hash: int) -> None:
        """The pool cached a full block (consecutive blocks of one chain share one event)."""
        parent, tokens = self._blocks.get(block_hash, (None, ()))
        last = self.pending[-1] if self.pending else None
        if (isinstance(last, BlockStored) and parent is not None
                and last.block_hashes[-1] == _u64(parent)):
            last.block_hashes.append(_u64(block_hash))
            last.token_ids.extend(tokens)
            return
        self.pending.append(BlockStored(
            block_hashes=[_u64(block_hash)],
            parent_block_hash=None if parent is None else _u64(parent),
            token_ids=list(tokens), block_size=self.block_size, lora_id=None, medium="GPU",
            lora_name=None, extra_keys=[None], group_idx=0,
            kv_cache_spec_kind="full_attention"))

    def removed(self, block_hash: int) -> None:
        """The pool evicted a cached block."""
        self.pending.append(BlockRemoved(block_hashes=[_u64(block_hash)], medium="GPU",
                                         group_idx=0))

    def take(self) -> list[KVEvent]:
        events, self.pending = self.pending, []
        for e in events:
            if isinstance(e, BlockStored) and e.extra_keys is not None:
                e.extra_keys = [None] * len(e.block_hashes)
        return events


class KvEventsPublisher:
    """Sends the recorder's events on a PUB socket and serves replays, like vLLM's."""

    def __init__(self, recorder: KvEventRecorder, settings: KvEventsSettings) -> None:
        import zmq
        import zmq.asyncio

        self.recorder = recorder
        self.settings = settings
        self.ctx = zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        endpoint = settings.endpoint
        if "*" in endpoint or "::" in endpoint or not endpoint.startswith("tcp://"):
            self.pub.bind(endpoint)
        else:
            self.pub.connect(endpoint)
        self.router = None
        if settings.replay_endpoint:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            self.router.bind(settings.replay_endpoint)
        self.seq = 0
        self.buffer: deque[tuple[int, list[bytes]]] = deque(maxlen=REPLAY_BUFFER)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._flushing(), name="kv events flush"))
        if self.router is not None:
            self._tasks.append(asyncio.create_task(self._replaying(), name="kv events replay"))

    async def flush(self) -> None:
        """Publish what the pool did since the last flush as one batch."""
        events = self.recorder.take()
        if not events:
            return
        frames = encode_frames(self.settings.topic, self.seq,
                               EventBatch(ts=time.time(), events=events, data_parallel_rank=0))
        self.buffer.append((self.seq, frames))
        self.seq += 1
        await self.pub.send_multipart(frames)

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception as err:  # a closed socket at shutdown, a full buffer
                log.debug("KV events not sent: %s", err)

    async def _replaying(self) -> None:
        assert self.router is not None
        while True:
            frames = await self.router.recv_multipart()
            if len(frames) < 3:
                continue
            identity, start = frames[0], int.from_bytes(frames[-1], "big", signed=True)
            for seq, batch in list(self.buffer):
                if seq >= start:
                    await self.router.send_multipart([identity, b"", *batch])
            await self.router.send_multipart(
                [identity, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pub.close()
        if self.router is not None:
            self.router.close()
        self.ctx.term()


def note_prompt(pool: object, token_ids: Sequence[int], hashes: Sequence[int]) -> None:
    """A request arrived at an engine that publishes events: note its blocks' tokens."""
    listener = getattr(pool, "listener", None)
    if isinstance(listener, KvEventRecorder):
        listener.note(token_ids, hashes)


def start_publisher(pool: BlockPool, config: EngineConfig) -> KvEventsPublisher | None:
    """Publish ``pool``'s events when the engine is configured to (in the running loop)."""
    if not config.kv_events_endpoint:
        return None
    recorder = KvEventRecorder(config.block_size)
    publisher = KvEventsPublisher(recorder, KvEventsSettings(
        endpoint=config.kv_events_endpoint, replay_endpoint=config.kv_events_replay))
    pool.listener = recorder
    publisher.start()
    log.info("KV-cache events on %s (replay %s)", config.kv_events_endpoint,
             config.kv_events_replay or "off")
    return publisher


def kv_event_options(spec: object, port: int) -> dict[str, str]:
    """Engine options from vLLM's ``--kv-events-config`` JSON (``{port+N}`` filled in)."""
    if not isinstance(spec, dict) or not spec.get("enable_kv_cache_events", True):
        return {}
    out: dict[str, str] = {}
    for key, option in (("endpoint", "kv_events_endpoint"),
                        ("replay_endpoint", "kv_events_replay")):
        value = spec.get(key)
        if isinstance(value, str) and value:
            out[option] = expand_endpoint(value, "*", port)
    return out
