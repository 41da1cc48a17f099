"""One NATS request for the scheduler calls of one event-loop pass.

Under load an API process starts many select or route calls in the same pass of its event
loop (one per request its connections delivered together). Each call on its own costs a
NATS message both ways, in the API, in nats-server and in the scheduler replica, which on
a small machine is more than the decision itself. :class:`AskBatch` sends the calls of one
pass as one JSON array to the ``..._many`` endpoint and hands each caller its own item of
the answer array. A call that is alone in its pass (light load, one connection) goes to
the single endpoint as before, with no added wait: the batch leaves at the next pass,
which is when the single call left too.

A failure of the batch (no replica answers within the budget, the scheduler refused it)
is every caller's failure, as it would have been for each call alone; the scheduler's
client asks again within the budget as it does for one call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable

log = logging.getLogger("llmsched.api.batch")

MAX_BATCH = 64
"""Calls per NATS request at most; more in one pass go as several requests."""

Ask = Callable[[str, bytes], Awaitable[bytes]]
"""Request-reply within the budget: (subject, payload) → the reply's bytes."""


class AskBatch:
    """Joins the calls of one loop pass to ``subject`` into one call to ``many_subject``."""

    def __init__(self, ask: Ask, subject: str, many_subject: str,
                 limit: int = MAX_BATCH) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._ask = ask
        self.subject = subject
        self.many_subject = many_subject
        self.limit = limit
        self._waiting: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._items = msgspec.json.Decoder(list[msgspec.Raw])

    async def ask(self, payload: bytes) -> bytes:
        """The reply to ``payload`` (one JSON document), asked with the pass's other calls."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        self._waiting.append((payload, reply))
        if len(self._waiting) == 1:
            loop.call_soon(self._send)
        elif len(self._waiting) >= self.limit:
            self._send()
        return await reply

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        task = asyncio.ensure_future(self._call(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _call(self, batch: list[tuple[bytes, asyncio.Future[bytes]]]) -> None:
        try:
            replies = await self._replies([payload for payload, _ in batch])
        except asyncio.CancelledError:
            _fail(batch, SchedulerUnavailable("the API is stopping"))
            raise
        except (SchedulerUnavailable, SchedulerError) as err:
            _fail(batch, err)
            return
        except Exception as err:  # a bug must not leave the callers waiting forever
            log.exception("Batched scheduler call failed")
            _fail(batch, SchedulerUnavailable(f"batched call failed: {err!r}"))
            return
        for (_, reply), raw in zip(batch, replies, strict=True):
            if not reply.done():
                reply.set_result(raw)

    async def _replies(self, payloads: list[bytes]) -> list[bytes]:
        if len(payloads) == 1:
            return [await self._ask(self.subject, payloads[0])]
        raw = await self._ask(self.many_subject, b"[" + b",".join(payloads) + b"]")
        try:
            items = self._items.decode(raw)
        except msgspec.DecodeError as err:
            raise SchedulerUnavailable(f"unreadable batch answer: {err}") from None
        if len(items) != len(payloads):
            raise SchedulerUnavailable(
                f"batch answer has {len(items)} items for {len(payloads)} calls")
        return [bytes(item) for item in items]


def _fail(batch: list[tuple[bytes, asyncio.Future[bytes]]], err: Exception) -> None:
    """Each waiting caller gets its own exception (a shared one would pile up tracebacks)."""
    for _, reply in batch:
        if reply.done():
            continue
        if isinstance(err, SchedulerError):
            reply.set_exception(SchedulerError(err.code, err.message))
        else:
            reply.set_exception(SchedulerUnavailable(str(err)))
