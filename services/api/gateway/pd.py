"""One client request through a PD pool: a prefill on one instance, the decode on another.

vLLM's disaggregated-serving protocol, as its router and proxies speak it: the prefill
request is the client's with ``max_tokens: 1``, ``stream: false`` and
``kv_transfer_params: {"do_remote_decode": true, ...}``; the ``kv_transfer_params`` of its
answer go into the decode request, which keeps the client's ``max_tokens`` and ``stream``
and whose answer is relayed as it comes. Each role is its own scheduler pool
(``<pool>@prefill``, ``<pool>@decode``), routed, counted in flight and reported like any
other; retries go to another instance of the failing role, and a decode that fails before
its first byte runs the pipeline again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from services.api.gateway.admission import Ticket
from services.api.gateway.body import GatewayError, GatewayRequest
from services.api.gateway.proxy import (
    PATHS,
    Gateway,
    RouterUnavailable,
    Seen,
    Send,
    Target,
    _Exchange,
    _route_fields,
    _usage,
)
from services.api.gateway.upstream import UpstreamBroken, UpstreamFailed, UpstreamResponse
from shared.pd_config import Role, role_pool
from shared.routing import OutcomeEvent, RouteReply, RouteRequest

log = logging.getLogger("llmsched.api.gateway.pd")

PREFILL_KV = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
              "remote_block_ids": None, "remote_host": None, "remote_port": None}
"""What the prefill request carries (NixlConnector's fields; the prefill fills them in)."""
MAX_PREFILL_ANSWER = 1 << 20
HEADER_PREFILL = b"x-llmsched-prefill"
HEADER_DECODE = b"x-llmsched-decode"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class _Relayed(Exception):
    """The prefill's own 4xx answer went to the client: the request ends there."""


class _PrefillFailed(Exception):
    """The prefill attempt gave no usable answer (retried on another prefill instance)."""


def prefill_body(request: GatewayRequest, served_model: str | None) -> bytes:
    """The client's request as a prefill: one token, not streamed, KV kept for a decode."""
    body: dict[str, Any] = dict(request.body)
    if served_model is not None:
        body["model"] = served_model
    body["max_tokens"] = 1
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    body["stream"] = False
    body.pop("stream_options", None)  # vLLM refuses stream_options without stream
    body.pop("min_tokens", None)  # would exceed max_tokens 1
    body["kv_transfer_params"] = dict(PREFILL_KV)
    return _encode(body)


def decode_body(request: GatewayRequest, served_model: str | None,
                kv_transfer_params: Any) -> bytes:
    """The client's request as it came, plus the prefill's ``kv_transfer_params``."""
    body: dict[str, Any] = dict(request.body)
    if served_model is not None:
        body["model"] = served_model
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    else:
        body.pop("kv_transfer_params", None)
    return _encode(body)


class PDExchange(_Exchange):
    """The prefill and decode attempts of one client request."""

    def __init__(self, gw: Gateway, request: GatewayRequest, target: Target,
                 send: Send, seen: Seen) -> None:
        super().__init__(gw, request, target, send, seen)
        self.tried_roles: dict[Role, list[str]] = {"prefill": [], "decode": []}
        self.failures: dict[Role, int] = {"prefill": 0, "decode": 0}
        self.routed: dict[Role, tuple[str, str, int]] = {}
        """Stages routed and not yet reported: role → (request id, member, attempt)."""
        self.seq = 0
        self.chosen: dict[Role, str] = {}

    async def run(self) -> None:
        """The pipeline; every stage routed is reported, however the request ends."""
        error = "client disconnected"
        try:
            await self._pipeline()
            error = "not used: the request ended before this stage"
        except GatewayError as err:
            error = f"not used: {err.message}"
            raise
        finally:
            for role, (request_id, member, attempt) in list(self.routed.items()):
                await self._stage_report(role, request_id, member, attempt, status=0,
                                         error=error, final=True)

    async def _pipeline(self) -> None:
        gw = self.gw
        retries = self.target.pd_retries
        path = PATHS[self.request.kind]
        served = self.target.served_model
        while True:
            # Both roles routed at once (one route round trip, not two); no decode instance
            # means no prefill is run for nothing.
            decode, prefill = await asyncio.gather(self._pick("decode"), self._pick("prefill"),
                                                   return_exceptions=True)
            if isinstance(decode, BaseException):
                raise decode
            if isinstance(prefill, BaseException):
                raise prefill
            decode_id, decode_member, decode_url = decode
            try:
                kv_params = await self._prefill(prefill)
            except _Relayed:
                return
            body = decode_body(self.request, served, kv_params)
            attempt = self.routed["decode"][2]
            try:
                upstream = await gw.upstream.open(
                    decode_url + path, body,
                    {"content-type": "application/json", "x-request-id": decode_id},
                    gw.settings.first_byte_timeout_s)
            except UpstreamFailed as err:
                await self._stage_report("decode", decode_id, decode_member, attempt,
                                         status=err.status, error=err.message, final=False)
                self._failed("decode", decode_member, err.message)
                if self.failures["decode"] > retries or not err.retryable:
                    raise self._exhausted("decode") from None
                log.info("Decode of %s request %s failed before its first byte (%s); "
                         "running the pipeline again", self.target.alias, self.base_id,
                         self.last_error)
                await self._pause("decode")
                continue
            upstream.headers = [*upstream.headers,
                                (HEADER_PREFILL, self.chosen.get("prefill", "").encode()),
                                (HEADER_DECODE, decode_member.encode())]
            await self._relay_stage("decode", upstream, decode_id, decode_member, attempt)
            return

    async def _prefill(self, first: tuple[str, str, str]) -> Any:
        """Run the prefill on one instance after another; its ``kv_transfer_params``."""
        gw = self.gw
        body = prefill_body(self.request, self.target.served_model)
        path = PATHS[self.request.kind]
        pick: tuple[str, str, str] | None = first
        while True:
            request_id, member, url = pick or await self._pick("prefill")
            pick = None
            attempt = self.routed["prefill"][2]
            dispatched = gw.clock()
            try:
                kv_params, usage = await self._prefill_once(url + path, body, request_id,
                                                            member, attempt)
            except (UpstreamFailed, _PrefillFailed) as err:
                status = err.status if isinstance(err, UpstreamFailed) else 200
                message = err.message if isinstance(err, UpstreamFailed) else str(err)
                await self._stage_report("prefill", request_id, member, attempt,
                                         status=status, error=message, final=False)
                self._failed("prefill", member, message)
                retryable = not isinstance(err, UpstreamFailed) or err.retryable
                if self.failures["prefill"] > self.target.pd_retries or not retryable:
                    raise self._exhausted("prefill") from None
                log.info("Retrying the prefill of %s request %s elsewhere: %s",
                         self.target.alias, self.base_id, self.last_error)
                await self._pause("prefill")
                continue
            took = gw.clock() - dispatched
            await self._stage_report("prefill", request_id, member, attempt, status=200,
                                     error=None, final=True, ttft=took, e2e=took,
                                     prompt_tokens=usage[0], completion_tokens=usage[1])
            if kv_params is None:
                log.warning("Prefill %s of %s request %s answered without kv_transfer_params"
                            " (no KV connector?): the decode computes the prompt again",
                            member, self.target.alias, self.base_id)
            return kv_params

    async def _prefill_once(self, url: str, body: bytes, request_id: str, member: str,
                            attempt: int) -> tuple[Any, tuple[int | None, int | None]]:
        gw = self.gw
        upstream = await gw.upstream.open(
            url, body, {"content-type": "application/json", "x-request-id": request_id},
            gw.settings.first_byte_timeout_s)
        if upstream.status >= 400:
            # The engine refused the request itself (4xx): the client's to see, as it is.
            await self._relay_stage("prefill", upstream, request_id, member, attempt)
            raise _Relayed
        data = bytearray(upstream.first)
        try:
            async for chunk in upstream.rest():
                data += chunk
                if len(data) > MAX_PREFILL_ANSWER:
                    upstream.abort()
                    raise _PrefillFailed(f"prefill answer longer than {MAX_PREFILL_ANSWER} "
                                         "bytes")
        except UpstreamBroken as err:
            upstream.abort()
            raise _PrefillFailed(f"prefill answer broken: {err}") from None
        upstream.close()
        try:
            answer = _decode(bytes(data))
        except msgspec.DecodeError as err:
            raise _PrefillFailed(f"prefill answer is not JSON: {err}") from None
        if not isinstance(answer, dict):
            raise _PrefillFailed("prefill answer is not a JSON object")
        self.chosen["prefill"] = member
        return answer.get("kv_transfer_params"), _usage(bytes(data), whole=True)

    async def _pick(self, role: Role) -> tuple[str, str, str]:
        """Route one attempt of ``role``: (request id, member, url); counted in flight."""
        gw = self.gw
        pool = (role_pool(self.target.pool, role), self.target.partition)
        with contextlib.ExitStack() as admitted:
            ticket: Ticket | None = None
            while True:
                self.seq += 1
                request_id = f"{self.base_id}-{role[0]}{self.seq}"
                attempt = self.failures[role]
                self.routed[role] = (request_id, "", attempt)
                try:
                    reply = await gw.router.route(RouteRequest(
                        pool=pool[0], partition=pool[1], request_id=request_id,
                        exclude=list(self.tried_roles[role]),
                        prompt_chars=self.request.prompt_chars,
                        ttl_s=gw.settings.inflight_ttl_s, **_route_fields(self.request)))
                except RouterUnavailable:
                    del self.routed[role]
                    raise GatewayError(503, "no scheduler answered; retry shortly",
                                       code="scheduler_unavailable", retry_after=1) from None
                if reply.url:
                    self.routed[role] = (request_id, reply.answer, attempt)
                    if role == "decode":
                        self.chosen["decode"] = reply.answer
                    return request_id, reply.answer, reply.url
                del self.routed[role]
                if reply.answer == "busy" and gw.admission is not None:
                    if ticket is None:
                        ticket = admitted.enter_context(gw.admission.enter(pool))
                    await gw.admission.wait_turn(pool, ticket)
                    continue
                raise self._no_role_instance(role, reply)

    def _failed(self, role: Role, member: str, message: str) -> None:
        self.tried_roles[role].append(member)
        self.failures[role] += 1
        self.last_error = f"{role} {member}: {message}"

    async def _pause(self, role: Role) -> None:
        attempt = self.failures[role] - 1
        await asyncio.sleep(min(1.0, self.gw.settings.backoff_s * 2 ** attempt))

    def _exhausted(self, role: Role) -> GatewayError:
        return GatewayError(502, f"no {role} instance answered: {self.last_error} (after "
                            f"{self.failures[role]} {role} attempts)", code="upstream_failed")

    def _no_role_instance(self, role: Role, reply: RouteReply) -> GatewayError:
        if self.tried_roles[role]:
            return GatewayError(502, f"no {role} instance answered: {self.last_error}; no other"
                                f" {role} instance left to try", code="upstream_failed")
        if reply.answer == "busy":
            return GatewayError(503, f"every {role} instance of `{self.target.alias}` is "
                                "saturated; retry later", code="overloaded", retry_after=2)
        return GatewayError(503, f"no {role} instance of `{self.target.alias}` can take the "
                            f"request now ({reply.reason or reply.answer})",
                            code="no_instance", retry_after=2)

    async def _relay_stage(self, role: Role, upstream: UpstreamResponse, request_id: str,
                           member: str, attempt: int) -> None:
        """Stream one stage's answer to the client chunk by chunk; report when done."""
        async def report(error: str | None, ttft: float, prompt: int | None,
                         completion: int | None) -> None:
            await self._stage_report(role, request_id, member, attempt,
                                     status=upstream.status, error=error, final=True,
                                     ttft=ttft, e2e=self.gw.clock() - self.started,
                                     prompt_tokens=prompt, completion_tokens=completion)

        await self._stream(upstream, request_id, member, report)

    async def _stage_report(self, role: Role, request_id: str, member: str, attempt: int, *,
                            status: int, error: str | None, final: bool,
                            ttft: float | None = None, e2e: float | None = None,
                            prompt_tokens: int | None = None,
                            completion_tokens: int | None = None) -> None:
        """The outcome of one stage attempt, in its role pool (it leaves the in-flight count)."""
        routed = self.routed.get(role)
        if routed is not None and routed[0] == request_id:
            del self.routed[role]
        await self.gw.events.outcome(OutcomeEvent(
            request_id=request_id, pool=role_pool(self.target.pool, role),
            partition=self.target.partition, member=member, alias=self.target.alias,
            status=status, error=error, ttft_s=ttft, e2e_s=e2e, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, retries=attempt, final=final,
            stream=self.request.stream and role == "decode", at=self.gw.wall()))
