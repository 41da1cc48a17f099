"""NATS connection helper with reconnects that never give up, and batched event publishing."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS

from shared.slow_consumer import DroppedMessages, OnDropped

log = logging.getLogger("llmsched.bus")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]
Event = TypeVar("Event", bound=msgspec.Struct)


def nats_servers(url: str | None = None) -> list[str]:
    """``NATS_URL`` may list several cluster servers, comma-separated."""
    raw = url or os.environ.get("NATS_URL") or DEFAULT_NATS_URL
    return [part.strip() for part in raw.split(",") if part.strip()]


async def connect_nats(name: str, url: str | None = None, *, no_echo: bool = False,
                       on_dropped: OnDropped | None = None) -> NATS:
    """Connect, retrying for ever (a service waits for its bus rather than dying).

    ``no_echo``: messages this connection publishes are not delivered to its own
    subscriptions (a scheduler replica needs no copy of its own selections).
    ``on_dropped``: called with the subscription's subject for every message nats-py drops
    because the subscription is past its pending limits (a slow consumer); those drops are
    logged a line per subscription at most every 10 s, not one per message.
    """
    drops = DroppedMessages(name, on_dropped=on_dropped)

    async def on_disconnect() -> None:
        log.warning("NATS disconnected (%s)", name)

    async def on_reconnect() -> None:
        log.info("NATS reconnected (%s)", name)

    async def on_error(err: Exception) -> None:
        if isinstance(err, nats.errors.SlowConsumerError):
            drops.dropped(err)  # once per dropped message: counted, logged sparingly
            return
        log.warning("NATS error (%s): %s", name, err)

    delay = 0.2
    while True:
        try:
            return await _connect_once(name, url, on_disconnect, on_reconnect, on_error,
                                       no_echo)
        except (OSError, TimeoutError, nats.errors.NoServersError) as err:
            log.warning("NATS not reachable at %s (%s); retrying in %.1fs",
                        ",".join(nats_servers(url)), err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _connect_once(name: str, url: str | None, on_disconnect: Callback,
                        on_reconnect: Callback, on_error: ErrorCallback,
                        no_echo: bool = False) -> NATS:
    return await nats.connect(
        no_echo=no_echo,
        servers=nats_servers(url),
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        ping_interval=5,
        max_outstanding_pings=2,
        pending_size=8 * 1024 * 1024,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


EVENT_PACE_S = 0.001
"""Least time between two messages of one event batch (see :class:`EventBatch`)."""


class EventBatch(Generic[Event]):
    """Publishes events in batches, one message per batch, at most one per ``pace_s``.

    One event goes out as itself, several as a JSON array of them, so subscribers decode
    ``Event | list[Event]`` and old single-event publishers still fit. Nothing waits. An
    event added when the last message left more than ``pace_s`` ago goes out at the next
    pass of the event loop; under load the events of ``pace_s`` share one message. A
    message costs the publisher a task step, a write and a flusher wake-up (about 12 µs
    of CPU), more than the events in it, and every subscriber and nats-server one message
    each; one per millisecond bounds that to 1,000 messages a second per subject
    (bench/README.md, gateway). A lost batch is covered like a lost event.
    """

    def __init__(self, nc: NATS, subject: str, what: str, *,
                 pace_s: float = EVENT_PACE_S) -> None:
        self.nc = nc
        self.subject = subject
        self.what = what
        self.pace_s = pace_s
        self._events: list[Event] = []
        self._encode = msgspec.json.Encoder().encode
        self._sending: set[asyncio.Task[None]] = set()
        self._last_sent = -math.inf
        """Loop time of the last message."""

    def add(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) == 1:
            loop = asyncio.get_running_loop()
            wait = self._last_sent + self.pace_s - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)

    async def close(self) -> None:
        """Publish the events waiting for their pace now, and wait for every publish (call
        it before the connection drains: a waiting event is not in nats-py's buffer yet)."""
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _flush(self) -> None:
        events, self._events = self._events, []
        if not events:
            return
        self._last_sent = asyncio.get_running_loop().time()
        data = self._encode(events[0] if len(events) == 1 else events)
        task = asyncio.ensure_future(self._publish(data, len(events)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, data: bytes, count: int) -> None:
        # nats-py only appends to its buffer here; its flusher writes in the background.
        try:
            await self.nc.publish(self.subject, data)
        except Exception as err:  # bus down: whatever covers a lost event covers these
            log.debug("%d %s not published: %s", count, self.what, err)
