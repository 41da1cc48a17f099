"""One OpenAI request through the gateway: route, hold, proxy with retries, report the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from services.api.gateway.admission import AdmissionLines, Ticket
from services.api.gateway.body import GatewayError, GatewayRequest, Kind, parse_request
from services.api.gateway.deadlines import Deadlines
from services.api.gateway.hold import HoldQueues
from services.api.gateway.metrics import GatewayMetrics
from services.api.gateway.upstream import Upstream, UpstreamFailed, UpstreamResponse
from shared.routing import OutcomeEvent, RouteReply, RouteRequest

if TYPE_CHECKING:
    from services.api.gateway.route_keys import Headers, RouteKeys

log = logging.getLogger("llmsched.api.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
USAGE_TAIL_BYTES = 4096
MAX_PARSED_BODY = 1 << 20
WATCH_AFTER_S = 0.5
"""A request still running after this long starts watching for its client's disconnect."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests for a model go."""

    alias: str
    pool: str
    partition: str
    managed: bool
    """A registered alias whose instances the autoscaler can wake or start."""
    served_model: str | None = None
    """The model name the engines serve, when it differs from the alias."""
    pd: bool = False
    """A PD pool: each request is a prefill, then a decode (pd.py)."""
    pd_retries: int = 3
    """PD pools: other instances of the failing role tried (``pd.max_retries``)."""


class Resolver(Protocol):
    """Model name → target (None: unknown model)."""

    def resolve(self, model: str) -> Target | None: ...


class Router(Protocol):
    """The scheduler's route call (raises RouterUnavailable when no replica answers)."""

    async def route(self, request: RouteRequest) -> RouteReply: ...


class RouterUnavailable(Exception):
    """No scheduler answered the route call."""


class Events(Protocol):
    """Publication of outcomes (a buffered publish: it does not wait for the bus)."""

    async def outcome(self, event: OutcomeEvent) -> None: ...


@dataclass
class GatewaySettings:
    """Knobs of the proxy hop."""

    max_ongoing: int = 100
    """Concurrent requests one API process serves (SERVE_MAX_ONGOING_REQUESTS)."""
    retries: int = 2
    """Other instances tried after a failure before the first byte."""
    backoff_s: float = 0.05
    """First pause between attempts; doubles each time (capped at 1 s)."""
    first_byte_timeout_s: float = 120.0
    """An engine that sends no first byte within this is abandoned for another."""
    inflight_ttl_s: float = 900.0
    """How long a routed request counts as in flight if its outcome is never reported."""


class Gateway:
    """Serves chat and completions requests for every API process's clients."""

    def __init__(self, settings: GatewaySettings, resolver: Resolver, router: Router,
                 upstream: Upstream, events: Events, hold: HoldQueues,
                 admission: AdmissionLines | None = None, *,
                 metrics: GatewayMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.resolver = resolver
        self.router = router
        self.upstream = upstream
        self.events = events
        self.hold = hold
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.ongoing = 0
        self.keys: RouteKeys | None = None
        """Makes the route fields of requests to cache-aware pools (set by the service)."""
        self.deadlines = Deadlines()
        """Coarse timeouts of the requests (the disconnect watch; the front's body reads)."""
        self.ids = random.Random()
        """Request ids (seeded from the OS; ids need to be unique, not secret)."""

    async def handle(self, kind: Kind, raw: bytes, receive: Receive, send: Send,
                     headers: Headers = (), seen: Seen | None = None) -> None:
        """Answer one request; errors before the answer starts are raised as GatewayError.

        ``seen`` (given by the caller) gets the status the client got, for its access log.
        """
        if seen is None:
            seen = Seen()
        started = self.clock()
        try:
            await self._handle(kind, raw, receive, send, seen, headers)
        except GatewayError as err:
            seen.status = err.status
            if self.metrics is not None:
                self.metrics.rejected(seen.model, err.code)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.request(seen.model, seen.status or 499, seen.ttft,
                                     self.clock() - started)

    async def _handle(self, kind: Kind, raw: bytes, receive: Receive, send: Send,
                      seen: Seen, headers: Headers = ()) -> None:
        request = parse_request(raw, kind)
        target = self.resolver.resolve(request.model)
        if target is None:
            raise GatewayError(404, f"The model `{request.model}` does not exist.",
                               param="model", code="model_not_found")
        if self.keys is not None:
            request = self.keys.apply(target, request, headers)
        seen.model = target.alias
        if self.ongoing >= self.settings.max_ongoing:
            raise GatewayError(429, f"this gateway process already serves "
                               f"{self.ongoing} requests (max_ongoing_requests); retry later",
                               code="too_many_requests", retry_after=1)
        self.ongoing += 1
        exchange = _Exchange(self, request, target, send, seen)
        if target.pd:  # imported here: pd.py builds on this module
            from services.api.gateway.pd import PDExchange

            exchange = PDExchange(self, request, target, send, seen)
        # The exchange runs in this task; a watcher cancels it if the client goes away.
        this = asyncio.current_task()
        assert this is not None
        watch = _DisconnectWatch(receive, this, exchange, self.deadlines)
        try:
            await exchange.run()
        except asyncio.CancelledError:
            if not watch.gone:
                raise  # a shutdown, not the client
            this.uncancel()
            log.info("Client of %s request %s went away after %.3fs; upstream cancelled",
                     target.alias, exchange.base_id, self.clock() - exchange.started)
        finally:
            watch.stop()
            self.ongoing -= 1


@dataclass(slots=True)
class Seen:
    """What the metrics and the access log of one request need: its alias, the status
    sent (0: none yet), the TTFT."""

    model: str = ""
    status: int = 0
    ttft: float | None = None


class _Exchange:
    """The attempts of one client request."""

    def __init__(self, gw: Gateway, request: GatewayRequest, target: Target,
                 send: Send, seen: Seen) -> None:
        self.gw = gw
        self.seen = seen
        self.request = request
        self.target = target
        self.send = send
        self.base_id = f"{gw.ids.getrandbits(64):016x}"
        self.started = gw.clock()
        self.tried: list[str] = []
        self.last_error = ""
        self.answered = False
        """The last body message was handed to the server (no cancelling after that)."""
        self.pending: tuple[str, str, int] | None = None
        """The attempt routed but not yet reported: (request id, member, attempt)."""

    async def run(self) -> None:
        """Attempts until one engine answers; a cancelled exchange still reports its outcome."""
        try:
            await self._attempts()
        except asyncio.CancelledError:
            if self.pending is not None:
                request_id, member, attempt = self.pending
                await self._report(request_id, member, attempt, status=0,
                                   error="client disconnected", final=True)
            raise

    async def _attempts(self) -> None:
        gw = self.gw
        attempt = 0
        body = self.request.for_engine(self.target.served_model)
        pool = (self.target.pool, self.target.partition)
        # The hold and admission lines are joined only when needed (rarely): no context
        # managers on the path of a request that is routed at once.
        held: contextlib.ExitStack | None = None
        admitted: contextlib.ExitStack | None = None
        try:
            deadline: float | None = None
            ticket: Ticket | None = None
            while True:
                request_id = f"{self.base_id}-{attempt}"
                self.pending = (request_id, "", attempt)
                reply = await self._route(request_id)
                self.pending = (request_id, reply.answer if reply.url else "", attempt)
                if not reply.url:
                    self.pending = None
                    if reply.answer == "busy" and gw.admission is not None:
                        # Every member is past its limits: wait in the pool's line (late
                        # binding: the first member to free a slot takes the next in line).
                        if ticket is None:
                            admitted = contextlib.ExitStack()
                            ticket = admitted.enter_context(gw.admission.enter(pool))
                            self._queued(admitted, "admission")
                        await gw.admission.wait_turn(pool, ticket)
                        continue
                    if self.target.managed and reply.active == 0 and not self.tried:
                        if deadline is None:
                            held = contextlib.ExitStack()
                            deadline = held.enter_context(gw.hold.enter(self.target.alias))
                            self._queued(held, "hold")
                            log.info("Holding a request for %s: no active instance (%s)",
                                     self.target.alias, reply.reason)
                        await gw.hold.pause(self.target.alias, deadline)
                        continue
                    raise self._no_instance(reply)
                if held is not None:
                    held.close()
                    held, deadline = None, None
                if admitted is not None:
                    admitted.close()  # out of the line: the next one may try at once
                    admitted, ticket = None, None
                member = reply.answer
                try:
                    dispatched = gw.clock()
                    upstream = await gw.upstream.open(
                        reply.url + PATHS[self.request.kind], body,
                        {"content-type": "application/json", "x-request-id": request_id},
                        gw.settings.first_byte_timeout_s)
                except UpstreamFailed as err:
                    await self._report(request_id, member, attempt, status=err.status,
                                       error=err.message, final=False)
                    self.tried.append(member)
                    self.last_error = f"{member}: {err.message}"
                    if attempt >= gw.settings.retries or not err.retryable:
                        raise GatewayError(
                            502, f"no engine answered: {self.last_error} (after "
                            f"{attempt + 1} attempts)", code="upstream_failed") from None
                    log.info("Retrying %s request %s elsewhere: %s", self.target.alias,
                             self.base_id, self.last_error)
                    if gw.metrics is not None:
                        gw.metrics.retried(self.target.alias)
                    await asyncio.sleep(min(1.0, gw.settings.backoff_s * 2 ** attempt))
                    attempt += 1
                    continue
                await self._relay(upstream, request_id, member, attempt,
                                  gw.clock() - dispatched)
                return
        finally:
            if held is not None:
                held.close()
            if admitted is not None:
                admitted.close()

    def _queued(self, line: contextlib.ExitStack, queue: str) -> None:
        """Count the request in ``queue`` until ``line`` closes."""
        metrics = self.gw.metrics
        if metrics is None:
            return
        alias, clock = self.target.alias, self.gw.clock
        entered = clock()
        metrics.queued(alias, queue)
        line.callback(lambda: metrics.dequeued(alias, queue, clock() - entered))

    async def _route(self, request_id: str) -> RouteReply:
        try:
            return await self.gw.router.route(RouteRequest(
                pool=self.target.pool, partition=self.target.partition, request_id=request_id,
                exclude=list(self.tried), prompt_chars=self.request.prompt_chars,
                ttl_s=self.gw.settings.inflight_ttl_s, **_route_fields(self.request)))
        except RouterUnavailable:
            raise GatewayError(503, "no scheduler answered; retry shortly",
                               code="scheduler_unavailable", retry_after=1) from None

    def _no_instance(self, reply: RouteReply) -> GatewayError:
        if self.tried:
            return GatewayError(502, f"no engine answered: {self.last_error}; no other "
                                "instance left to try", code="upstream_failed")
        if reply.answer == "busy":
            return GatewayError(503, f"every instance of `{self.target.alias}` is saturated; "
                                "retry later", code="overloaded", retry_after=2)
        return GatewayError(503, f"no instance of `{self.target.alias}` can take the request "
                            f"now ({reply.reason or reply.answer})", code="no_instance",
                            retry_after=2)

    async def _relay(self, upstream: UpstreamResponse, request_id: str, member: str,
                     attempt: int, engine_ttft: float) -> None:
        """Stream the engine's answer to the client chunk by chunk; report when done."""
        async def report(error: str | None, ttft: float, prompt: int | None,
                         completion: int | None) -> None:
            await self._report(request_id, member, attempt, status=upstream.status,
                               error=error, ttft=ttft, engine_ttft=engine_ttft,
                               e2e=self.gw.clock() - self.started, prompt_tokens=prompt,
                               completion_tokens=completion, final=True)

        await self._stream(upstream, request_id, member, report)

    async def _stream(self, upstream: UpstreamResponse, request_id: str, member: str,
                      report: Callable[[str | None, float, int | None, int | None],
                                       Awaitable[None]]) -> None:
        """Relay ``upstream`` to the client chunk by chunk, then ``report`` (error, TTFT,
        prompt and completion tokens) however it ended."""
        ttft = self.gw.clock() - self.started
        send = self.send
        tail = bytearray(upstream.first)
        parse_whole = not self.request.stream and upstream.status < 400
        error: str | None = None
        self.seen.status, self.seen.ttft = upstream.status, ttft
        try:
            await send({"type": "http.response.start", "status": upstream.status,
                        "headers": upstream.headers})
            if upstream.ended():  # a small JSON answer often comes whole with its head
                self.answered = True
                await send({"type": "http.response.body", "body": upstream.first,
                            "more_body": False})
                upstream.close()
                return
            if upstream.first:
                await send({"type": "http.response.body", "body": upstream.first,
                            "more_body": True})
            async for chunk in upstream.rest():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                tail += chunk
                if parse_whole:
                    if len(tail) > MAX_PARSED_BODY:
                        parse_whole = False
                elif len(tail) > 2 * USAGE_TAIL_BYTES:
                    del tail[:-USAGE_TAIL_BYTES]
            self.answered = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            upstream.close()
        except asyncio.CancelledError:
            error = "client disconnected"
            upstream.abort()
            raise
        except Exception as err:  # the engine died mid-stream: the client sees a cut stream
            error = f"stream broken: {type(err).__name__}: {err}"
            upstream.abort()
            log.warning("Request %s to %s broke after the first byte: %s", request_id, member,
                        error)
        finally:
            prompt, completion = _usage(bytes(tail), whole=parse_whole)
            await report(error, ttft, prompt, completion)

    async def _report(self, request_id: str, member: str, attempt: int, *, status: int,
                error: str | None, final: bool, ttft: float | None = None,
                engine_ttft: float | None = None,
                e2e: float | None = None, prompt_tokens: int | None = None,
                completion_tokens: int | None = None) -> None:
        self.pending = None
        await self.gw.events.outcome(OutcomeEvent(
            request_id=request_id, pool=self.target.pool, partition=self.target.partition,
            member=member, alias=self.target.alias, status=status, error=error,
            ttft_s=ttft, upstream_ttft_s=engine_ttft, e2e_s=e2e, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, retries=attempt, final=final,
            stream=self.request.stream, at=self.gw.wall()))


class _DisconnectWatch:
    """Cancels a request's task when its client closes the connection before the answer ends.

    Armed only once the request has lasted ``WATCH_AFTER_S`` (up to a tick of ``deadlines``
    later): a watcher task from the start cost each request about 35 µs of CPU, a quarter of
    the gateway's own work, and a short request ends before its client's leaving could spare
    the engine much. A client that left
    earlier is seen as soon as the watcher arms: the server remembers the disconnect.
    """

    __slots__ = ("_deadlines", "_exchange", "_receive", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], exchange: _Exchange,
                 deadlines: Deadlines) -> None:
        self._receive = receive
        self._task = task
        self._exchange = exchange
        self._watcher: asyncio.Task[None] | None = None
        self._deadlines = deadlines
        deadlines.set(self, task.get_loop().time() + WATCH_AFTER_S, self._arm)
        self.gone = False
        """The client left and the task was cancelled for it."""

    def stop(self) -> None:
        self._deadlines.clear(self)
        if self._watcher is not None:
            self._watcher.cancel()

    def _arm(self) -> None:
        self._watcher = self._task.get_loop().create_task(self._watch())

    async def _watch(self) -> None:
        # The server also reports a disconnect once the response is complete; that one is
        # not the client leaving, and cancelling then would hit whatever the task awaits next.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self._exchange.answered:
            self.gone = True
            self._task.cancel()


def _route_fields(request: GatewayRequest) -> dict[str, Any]:
    """The cache-aware fields of a route call (none for other pools)."""
    r = request.route
    if r is None:
        return {}
    return {"prefix_hashes": r.prefix_hashes, "token_keys": r.token_keys,
            "prompt_tokens": r.prompt_tokens, "session": r.session}


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)


def _usage(data: bytes, *, whole: bool) -> tuple[int | None, int | None]:
    """Token counts from a JSON answer or the usage chunk at the end of an SSE stream."""
    candidates = [data] if whole else []
    if not whole:
        at = data.rfind(b'"usage"')
        if at < 0:
            return None, None
        start = data.rfind(b"data: ", 0, at)
        end = data.find(b"\n", at)
        if start < 0:
            return None, None
        candidates.append(data[start + 6:end if end > 0 else len(data)])
    for candidate in candidates:
        try:
            usage = _usage_decoder.decode(candidate).usage
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if usage is not None:
            return usage.prompt_tokens, usage.completion_tokens
    return None, None
