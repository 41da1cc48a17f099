"""The API's client of the scheduler's NATS endpoints."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout

from services.api.ask_batch import AskBatch
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from shared.messages import AnalyzeReply, SimulateReply, StatusReply
from shared.subjects import Subjects

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
STATUS_HEADER = "Status"
NO_RESPONDERS = "503"
"""The status of the server's empty answer when no replica listens on the subject."""
RETRY_PAUSE_S = 0.01
"""The first pause before asking again after an immediate failure (then doubling)."""
RETRY_PAUSE_MAX_S = 0.1
"""The longest such pause."""


class SchedulerClient:
    """Request-reply calls to the scheduler queue group."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout_s: float) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout_s = timeout_s
        self._answer_dec = msgspec.json.Decoder(_Answer)
        self._sim_dec = msgspec.json.Decoder(SimulateReply)
        self._ana_dec = msgspec.json.Decoder(AnalyzeReply)
        self._status_dec = msgspec.json.Decoder(StatusReply)
        self._inbox = ""
        """Prefix of the reply subjects: one wildcard subscription serves every call."""
        self._starting = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()
        self._selects = AskBatch(self.ask, subjects.select, subjects.select_many)
        self._routes = AskBatch(self.ask, subjects.route, subjects.route_many)

    async def call(self, subject: str, payload: bytes, timeout_s: float | None = None) -> bytes:
        """One request-reply to the queue group; the reply's bytes."""
        return await self._call(subject, payload, timeout_s)

    async def _call(self, subject: str, payload: bytes, timeout_s: float | None = None) -> bytes:
        try:
            msg = await self._request(subject, payload, timeout_s or self.timeout_s)
        except (NatsTimeout, TimeoutError) as err:
            raise SchedulerUnavailable(type(err).__name__) from None
        except Exception as err:  # connection closed / reconnecting
            raise SchedulerUnavailable(str(err) or type(err).__name__) from None
        headers = msg.headers
        if headers:
            if headers.get(STATUS_HEADER) == NO_RESPONDERS and not msg.data:
                raise SchedulerUnavailable("NoRespondersError")
            if ERROR_CODE_HEADER in headers:
                code = headers.get(ERROR_CODE_HEADER, "500")
                raise SchedulerError(int(code) if code.isdigit() else 500,
                                     headers.get(ERROR_HEADER, "scheduler error"))
        return bytes(msg.data)

    async def _request(self, subject: str, payload: bytes, timeout_s: float) -> Msg:
        """One request-reply, its reply routed by token to the waiting future.

        Lighter than nats-py's ``request`` (no new NUID, wait_for or done-callback per
        call): about half of its CPU per call under load (bench/README.md, gateway).
        """
        inbox = self._inbox or await self._subscribe_replies()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = reply
        try:
            await self.nc.publish(subject, payload, reply=inbox + token)
            timer = loop.call_later(timeout_s, _time_out, reply)
            try:
                return await reply
            finally:
                timer.cancel()
        finally:
            self._waiting.pop(token, None)

    async def _subscribe_replies(self) -> str:
        async with self._starting:
            if not self._inbox:
                inbox = f"{self.nc.new_inbox()}."
                await self.nc.subscribe(f"{inbox}*", cb=self._on_reply)
                self._inbox = inbox
        return self._inbox

    async def _on_reply(self, msg: Msg) -> None:
        reply = self._waiting.pop(msg.subject[len(self._inbox):], None)
        if reply is not None and not reply.done():
            reply.set_result(msg)

    async def ask(self, subject: str, payload: bytes) -> bytes:
        """One request-reply within the budget (``timeout_s``), asked again while it fails.

        A replica that dies holding a request never answers it: after half the budget the
        request goes again, to another replica of the queue group. A failure that comes at
        once (no replica subscribed: the NATS node every replica was on died and they are
        reconnecting to another; the connection itself reconnecting) is asked again after
        a short pause, until the budget ends.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        wait = self.timeout_s / 2
        pause = RETRY_PAUSE_S
        while True:
            try:
                return await self._call(subject, payload, wait)
            except SchedulerUnavailable:
                if deadline - loop.time() <= pause:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX_S)
            wait = deadline - loop.time()

    async def select(self, payload: bytes) -> str:
        """The answer for a validated select body (asked again as :meth:`ask` says; the
        selects of one loop pass go as one request, see ``ask_batch``)."""
        return self._answer_dec.decode(await self._selects.ask(payload)).answer

    async def route(self, payload: bytes) -> bytes:
        """The reply to an encoded ``RouteRequest``, batched like :meth:`select`."""
        return await self._routes.ask(payload)

    async def simulate(self, payload: bytes) -> SimulateReply:
        return self._sim_dec.decode(await self._call(self.subjects.simulate, payload, 30))

    async def analyze(self, payload: bytes) -> AnalyzeReply:
        return self._ana_dec.decode(await self._call(self.subjects.analyze, payload, 30))

    async def status(self, pool: str = "", partition: str = "") -> StatusReply:
        body = msgspec.json.encode({"pool_name": pool, "partition": partition})
        return self._status_dec.decode(await self._call(self.subjects.status, body, 5))

    async def ping(self, timeout_s: float = 1.0) -> int:
        """How many scheduler replicas answered a micro PING within the timeout."""
        if not self.nc.is_connected:
            return 0
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            await self.nc.publish(f"$SRV.PING.{self.subjects.scheduler_service}", b"",
                                  reply=inbox)
            count = 0
            wait = timeout_s
            try:
                while True:
                    msg = await sub.next_msg(timeout=wait)
                    if msg.data:  # an empty message is the server's "no responders" status
                        count += 1
                    wait = 0.05
            except (NatsTimeout, TimeoutError):
                pass
            return count
        finally:
            await sub.unsubscribe()


def _time_out(reply: asyncio.Future[Msg]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


class _Answer(msgspec.Struct):
    answer: str
