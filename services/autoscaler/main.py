"""Composition root of the autoscaler (for now: follows load events and logs them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg

from shared.bus import connect_nats
from shared.config import LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.logs import set_level
from shared.messages import LoadEvent
from shared.runtime import run_service
from shared.subjects import Subjects

log = logging.getLogger("llmsched.autoscaler")


def run(loaded: LoadedConfig) -> int:
    """``llmsched autoscaler``."""
    return run_service("autoscaler", loaded, serve)


async def serve(loaded: LoadedConfig, stop: asyncio.Event, *, nats_url: str | None = None,
                redis_url: str | None = None) -> None:
    """Subscribe to load events until ``stop``; scaling actions arrive with the worker plane."""
    subjects = Subjects(loaded.config.global_.prefix)
    watcher = ConfigWatcher(loaded)
    watcher.subscribe(lambda _o, new: set_level(new.config.global_.effective_log_level))
    nc = await connect_nats("autoscaler", nats_url)
    decoder = msgspec.json.Decoder(LoadEvent)
    last: dict[tuple[str, str], tuple[int, float, float]] = {}

    async def on_load(msg: Msg) -> None:
        try:
            event = decoder.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed load event: %s", err)
            return
        summary = (event.available, round(event.waiting_queue, 1), round(event.running_req, 1))
        ident = (event.name, event.partition)
        level = logging.INFO if last.get(ident) != summary else logging.DEBUG
        last[ident] = summary
        log.log(level, "Load %s:%s available=%d/%d running=%.0f waiting=%.0f kv_avg=%.2f",
                event.name, event.partition, event.available, event.members,
                event.running_req, event.waiting_queue, event.cache_usage_avg)

    sub = await nc.subscribe(subjects.load_all, cb=on_load)
    watch = asyncio.create_task(watcher.run(stop))
    log.info("Autoscaler following %s", subjects.load_all)
    try:
        await stop.wait()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await nc.drain()
