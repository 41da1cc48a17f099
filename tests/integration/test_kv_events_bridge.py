"""KV-cache events end to end: simulated engines publish vLLM's frames over ZMQ, the
collector's bridge republishes them on NATS, a scheduler's index finds a request's blocks
as the gateway computes them; it heals after lost batches and engine restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import msgspec
import nats
import pytest
import zmq
import zmq.asyncio

from services.api.gateway.route_keys import SimTokenizer
from services.collector.kv_events import KvEventsBridge, MemberSubscriber
from services.enginesim.config import EngineConfig
from services.enginesim.kv_events import KvEventRecorder, KvEventsPublisher, KvEventsSettings
from services.enginesim.launcher import RunningEngine, start_engine
from shared.config import PoolConfig
from shared.http_server import free_port
from shared.messages import MemberInfo
from shared.prefix import token_block_keys
from shared.prefix_config import KvEventsConfig
from shared.prefix_events import KvUpdate, kv_subject, kv_subject_all
from shared.scheduling.prefix_index import PrefixIndex

pytestmark = pytest.mark.integration

BS = 16


def chat(word: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{word} is the topic of this chat. " * 30},
            {"role": "user", "content": "tell me more"}]


def keys_of(messages: list[dict[str, str]]) -> list[int]:
    return token_block_keys(SimTokenizer().chat(messages), BS)


async def until(check: Callable[[], bool], what: str, seen: Callable[[], object],
                within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within_s}s; saw {seen()}")
        await asyncio.sleep(0.05)


async def engine(pub: int, replay: int, port: int = 0) -> RunningEngine:
    return await start_engine(EngineConfig(
        served_model_name=("m",), block_size=BS, num_gpu_blocks=4000, max_model_len=8192,
        kv_events_endpoint=f"tcp://*:{pub}", kv_events_replay=f"tcp://*:{replay}"), port=port)


async def ask(url: str, messages: list[dict[str, str]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(url + "/v1/chat/completions",
                              json={"model": "m", "messages": messages, "max_tokens": 2})
        assert r.status_code == 200, r.text


async def test_index_learns_engines_blocks_and_forgets_a_restarted_engine(
        nats_url: str, prefix: str) -> None:
    ports = [(free_port(), free_port()) for _ in range(2)]
    engines = [await engine(p, r) for p, r in ports]
    nc = await nats.connect(nats_url)
    index = PrefixIndex()
    decode = msgspec.json.Decoder(KvUpdate).decode

    async def on_update(msg: nats.aio.msg.Msg) -> None:
        index.apply(decode(msg.data))

    sub = await nc.subscribe(kv_subject_all(prefix), cb=on_update)
    bridge = KvEventsBridge(nc.publish, lambda part, pool: kv_subject(prefix, part, pool))
    pool = PoolConfig(name="chat", engine_type="vllm", source="static",
                      members=[f"127.0.0.1:{e.server.port}" for e in engines],
                      kv_events=KvEventsConfig(endpoint="tcp://{host}:" + "{port}",
                                               block_size=BS))
    members = [MemberInfo(key=f"m{i}", host="127.0.0.1", port=ports[i][0]) for i in range(2)]
    try:
        bridge.sync(pool, members)
        await asyncio.sleep(0.5)  # the SUB sockets connect (frames sent before are lost)
        apple, river = chat("apple"), chat("river")
        await ask(engines[0].url, apple)
        await ask(engines[1].url, river)
        await until(lambda: index.match(keys_of(apple)) == {"m0": len(keys_of(apple))}
                    and index.match(keys_of(river)) == {"m1": len(keys_of(river))},
                    "the index holds each engine's prompt blocks",
                    lambda: (index.match(keys_of(apple)), index.match(keys_of(river))))
        # Engine 0 restarts (same ports): its seq starts again at 0, its cache is empty.
        port0 = engines[0].server.port
        await engines[0].stop()
        engines[0] = await engine(*ports[0], port=port0)
        await asyncio.sleep(0.5)
        await ask(engines[0].url, chat("violin"))
        await until(lambda: "m0" in index.match(keys_of(chat("violin"))),
                    "the restarted engine's new blocks", lambda: index.held("m0"))
        assert index.match(keys_of(apple)) == {}, "a restarted engine's old blocks are ghosts"
        assert index.match(keys_of(river)) == {"m1": len(keys_of(river))}
        subscriber = bridge.subscribers[("chat", "Common", "m0")][0]
        assert subscriber.restarts == 1, (subscriber.restarts, subscriber.gaps)
    finally:
        await bridge.close()
        await sub.unsubscribe()
        await nc.close()
        for e in engines:
            await e.stop()


class Published:
    """What a subscriber published, in order."""

    def __init__(self) -> None:
        self.updates: list[KvUpdate] = []

    async def __call__(self, update: KvUpdate) -> None:
        self.updates.append(update)


async def test_lost_batches_are_replayed_else_forgotten() -> None:
    pub_port, replay_port = free_port(), free_port()
    recorder = KvEventRecorder(BS)
    publisher = KvEventsPublisher(recorder, KvEventsSettings(
        endpoint=f"tcp://*:{pub_port}", replay_endpoint=f"tcp://*:{replay_port}"))
    publisher.start()  # serves replays
    ctx = zmq.asyncio.Context()
    prompts = [list(range(i * 1000, i * 1000 + 3 * BS)) for i in range(3)]
    try:
        for ids in prompts:  # three batches: seq 0, 1, 2
            hashes = [hash((ids[0], b)) for b in range(3)]
            recorder.note(ids, hashes)
            for h in hashes:
                recorder.stored(h)
            await publisher.flush()
        frames = [f for _seq, f in publisher.buffer]
        assert [int.from_bytes(f[1], "big") for f in frames] == [0, 1, 2]
        pool = PoolConfig(name="p", engine_type="vllm", source="static", members=["h:1"])
        member = MemberInfo(key="h:1", host="127.0.0.1", port=1)
        for replay, expect_all in ((f"tcp://{{host}}:{replay_port}", True), (None, False)):
            out = Published()
            settings = KvEventsConfig(endpoint="tcp://{host}:1", replay=replay, block_size=BS)
            sub = MemberSubscriber(ctx, pool, settings, member, out)
            await sub.on_frames(frames[0])
            await sub.on_frames(frames[2])  # batch 1 was lost
            held = sub.mirror.held()
            assert sub.gaps == 1
            for i, ids in enumerate(prompts):
                present = set(token_block_keys(ids, BS)) <= held
                wanted = expect_all or i == 2
                assert present == wanted, (replay, i, [u.cleared for u in out.updates])
            if not expect_all:
                assert out.updates[-1].cleared, "without replay the member is forgotten"
    finally:
        await publisher.close()
        ctx.term()
