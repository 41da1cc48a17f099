"""The KV-event bridge: each member's ZMQ publisher → content-keyed updates on NATS.

One subscriber task per member of a pool with ``kv_events``. It connects to the engine's
PUB socket (or binds the address the engine connects to), mirrors the engine's cache
(``kv_mirror``) and publishes what changed as a ``KvUpdate`` on ``<prefix>.kv.events.…``.
Healing: on a seq jump it asks the replay endpoint for the missed batches; when there is
none, or the buffer no longer reaches back, or the seq went backwards (a restarted engine),
it publishes ``cleared`` and relearns. A new subscriber (collector start, config change)
starts a new epoch and first replays from seq 0 when a replay endpoint is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from services.collector.kv_mirror import Changes, MemberMirror
from shared.config import PoolConfig
from shared.messages import MemberInfo
from shared.prefix_config import KvEventsConfig, expand_endpoint
from shared.prefix_events import REPLAY_END, KvUpdate, WireError, decode_batch, decode_seq
from shared.tasks import cancel_and_wait

log = logging.getLogger("llmsched.collector.kv")

Publish = Callable[[KvUpdate], Awaitable[None]]
REPLAY_TIMEOUT_S = 2.0


class MemberSubscriber:
    """Listens to one member's engine and publishes its cache changes."""

    def __init__(self, ctx: zmq.asyncio.Context, pool: PoolConfig, settings: KvEventsConfig,
                 member: MemberInfo, publish: Publish) -> None:
        self.ctx = ctx
        self.pool = pool
        self.settings = settings
        self.member = member
        self.publish = publish
        self.endpoint = expand_endpoint(settings.endpoint, member.host, member.port)
        self.replay = (expand_endpoint(settings.replay, member.host, member.port)
                       if settings.replay else None)
        self.mirror = MemberMirror()
        self.epoch = uuid.uuid4().hex[:12]
        self.seq = 0
        self.batches = 0
        self.gaps = 0
        self.restarts = 0

    async def run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.settings.topic.encode())
        try:
            if self.settings.bind:
                sub.bind(self.endpoint)
            else:
                sub.connect(self.endpoint)
        except zmq.ZMQError as err:
            sub.close()
            log.warning("Pool %s:%s member %s: KV events at %s unusable: %s", self.pool.name,
                        self.pool.partition, self.member.key, self.endpoint, err)
            return
        log.info("Pool %s:%s member %s: listening to KV events at %s (%s)", self.pool.name,
                 self.pool.partition, self.member.key, self.endpoint,
                 "bound" if self.settings.bind else "connected")
        try:
            await self._emit(Changes(cleared=True))  # a new epoch: replicas start afresh
            if self.replay is not None:
                await self._replay_from(0, Changes())
            while True:
                frames = await sub.recv_multipart()
                await self.on_frames(frames)
        finally:
            sub.close()

    async def on_frames(self, frames: list[bytes]) -> None:
        """One multipart message from the publisher."""
        if len(frames) != 3:
            log.warning("Member %s: KV event message with %d frames ignored", self.member.key,
                        len(frames))
            return
        try:
            seq = decode_seq(frames[1])
            batch = decode_batch(frames[2])
        except WireError as err:
            log.warning("Member %s: bad KV event message ignored: %s", self.member.key, err)
            return
        changes = Changes()
        digest = zlib.crc32(frames[2])
        verdict = self.mirror.classify(seq, digest)
        if verdict == "duplicate":
            return
        if verdict == "restart":
            self.restarts += 1
            log.info("Member %s: KV event seq went back from %s to %d (engine restarted): "
                     "its cache is forgotten", self.member.key, self.mirror.last_seq, seq)
            self.mirror.forget(changes)
            self.mirror.reset_seq()
        elif verdict == "gap":
            self.gaps += 1
            missed_from = (self.mirror.last_seq or 0) + 1
            log.info("Member %s: KV events %d..%d lost; %s", self.member.key, missed_from,
                     seq - 1, "replaying" if self.replay else "forgetting its cache")
            if self.replay is None or not await self._replay_from(missed_from, changes,
                                                                    until=seq):
                self.mirror.forget(changes)
        self.mirror.apply(seq, digest, batch, changes)
        self.batches += 1
        await self._emit(changes)

    async def _replay_from(self, start: int, changes: Changes, until: int | None = None
                           ) -> bool:
        """Apply buffered batches from ``start`` (up to ``until``, exclusive); False when the
        buffer does not reach back to ``start`` or the replay endpoint does not answer."""
        assert self.replay is not None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay)
        complete = True
        first = True
        # Replayed batches go through the same checks as live ones.
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big", signed=True)])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) != 4:
                    continue
                seq = decode_seq(frames[2])
                if seq == REPLAY_END:
                    break
                if first and seq > start:
                    complete = False
                    self.mirror.forget(changes)
                first = False
                if until is not None and seq >= until:
                    continue
                digest = zlib.crc32(frames[3])
                if self.mirror.classify(seq, digest) == "duplicate":
                    continue
                self.mirror.apply(seq, digest, decode_batch(frames[3]), changes)
        except (TimeoutError, WireError, zmq.ZMQError) as err:
            log.info("Member %s: KV event replay from %s failed: %s", self.member.key,
                     self.replay, err or type(err).__name__)
            return False
        finally:
            dealer.close()
        await self._emit(changes)
        changes.stored.clear()
        changes.removed.clear()
        changes.cleared = False
        if not complete:
            log.info("Member %s: the replay buffer no longer reaches seq %d: the cache was "
                     "forgotten and relearnt from what it still holds", self.member.key, start)
        return True

    async def _emit(self, changes: Changes) -> None:
        if changes.empty():
            return
        self.seq += 1
        update = KvUpdate(pool=self.pool.name, partition=self.pool.partition,
                          member=self.member.key, epoch=self.epoch, seq=self.seq,
                          stored=list(changes.stored), removed=list(changes.removed),
                          cleared=changes.cleared, block_size=self.mirror.block_size,
                          at=time.time())
        try:
            await self.publish(update)
        except Exception as err:
            log.warning("KV update of %s not published: %s", self.member.key, err)


class KvEventsBridge:
    """Subscriber tasks for the members of every pool with ``kv_events``."""

    def __init__(self, publish_raw: Callable[[str, bytes], Awaitable[None]],
                 subject: Callable[[str, str], str]) -> None:
        self.ctx = zmq.asyncio.Context()
        self._publish_raw = publish_raw
        self._subject = subject
        self._enc = msgspec.json.Encoder()
        self.subscribers: dict[tuple[str, str, str],
                               tuple[MemberSubscriber, asyncio.Task[None]]] = {}

    async def _publish(self, update: KvUpdate) -> None:
        await self._publish_raw(self._subject(update.partition, update.pool),
                                self._enc.encode(update))

    def sync(self, pool: PoolConfig, members: list[MemberInfo]) -> None:
        """Listen to exactly these members of ``pool`` (none when it has no kv_events)."""
        wanted: dict[str, MemberInfo] = {}
        if pool.kv_events is not None:
            wanted = {m.key: m for m in members}
        for ident, (sub, task) in list(self.subscribers.items()):
            if ident[:2] != pool.ident:
                continue
            member = wanted.get(ident[2])
            if (member is None or sub.pool.kv_events != pool.kv_events
                    or (member.host, member.port) != (sub.member.host, sub.member.port)):
                task.cancel()
                del self.subscribers[ident]
        if pool.kv_events is None:
            return
        for key, member in wanted.items():
            ident = (pool.name, pool.partition, key)
            if ident not in self.subscribers:
                sub = MemberSubscriber(self.ctx, pool, pool.kv_events, member, self._publish)
                task = asyncio.create_task(sub.run(), name=f"kv events {ident}")
                self.subscribers[ident] = (sub, task)

    def retain(self, pools: set[tuple[str, str]]) -> None:
        """Stop listening to the members of pools no longer configured."""
        for ident, (_sub, task) in list(self.subscribers.items()):
            if ident[:2] not in pools:
                task.cancel()
                del self.subscribers[ident]

    async def close(self) -> None:
        tasks = [task for _sub, task in self.subscribers.values()]
        self.subscribers.clear()
        await cancel_and_wait(tasks)
        with contextlib.suppress(Exception):
            self.ctx.term()
