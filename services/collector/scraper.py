"""Scrape every available pool member's /metrics concurrently into one MetricsBatch."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx
import msgspec

from services.collector.extract import extract, wanted_names
from shared.config import MetricsConfig, PoolConfig
from shared.engines import AsleepProbe, EngineMetricsSpec
from shared.members import url_host
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch
from shared.promparse import PromParseError, SampleSelector

log = logging.getLogger("llmsched.collector.scraper")

DEFAULT_CONCURRENCY = 256
DEFAULT_CLIENTS = 32
KEEPALIVE_PER_CLIENT = 32
MAX_BODY_BYTES = 8 * 1024 * 1024
"""A real vLLM payload is ~50 kB; anything this big is not an engine's /metrics."""
MAX_ERROR_CHARS = 200
NO_ENGINE_METRICS = "no engine metrics found"


def new_client(*, verify: bool | ssl.SSLContext = True,
               max_keepalive: int = KEEPALIVE_PER_CLIENT) -> httpx.AsyncClient:
    """One scrape client: no connection cap (the scraper bounds concurrency), keep-alive."""
    return httpx.AsyncClient(
        verify=verify,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_keepalive,
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,  # members are reached directly, never through an HTTP(S)_PROXY
    )


@contextlib.asynccontextmanager
async def open_clients(count: int = DEFAULT_CLIENTS, *, verify: bool | ssl.SSLContext = True
                       ) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` scrape clients for one MetricsScraper, closed on exit.

    Give it about one client per 16-32 members: httpcore's pool does bookkeeping
    quadratic in its connection count on every request, so one client holding
    hundreds of keep-alive connections costs seconds per round.
    """
    if verify is True:
        verify = ssl.create_default_context()  # one CA load (~15 ms) shared by all clients
    clients = [new_client(verify=verify) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


class _ScrapeFailed(Exception):
    """A member answered, but not with usable metrics; the message is the published error."""


@dataclass(frozen=True, slots=True)
class _PoolPlan:
    """What every member scrape of one pool round shares."""

    clients: Sequence[httpx.AsyncClient]
    headers: dict[str, str]
    timeout: float
    selector: SampleSelector
    spec: EngineMetricsSpec
    secrets: tuple[str, ...]


class MetricsScraper:
    """Scrapes pools over injected httpx clients; one MemberMetrics per available member.

    Each member always goes through the same client (by a hash of its key) so its
    keep-alive connection is reused from round to round; see :func:`open_clients`.
    The injected clients serve ``http`` pools and ``https`` pools that verify with the
    system CAs; pools with ``verify: false`` or a CA bundle path get as many clients of
    their own, created on first use and closed by :meth:`aclose`.
    """

    def __init__(self, clients: httpx.AsyncClient | Sequence[httpx.AsyncClient], *,
                 max_concurrency: int = DEFAULT_CONCURRENCY,
                 user_agent: str | None = None) -> None:
        self.user_agent = user_agent
        """Sent with every scrape (the collector's id), so an engine can tell who asks."""
        self._clients = [clients] if isinstance(clients, httpx.AsyncClient) else list(clients)
        if not self._clients:
            raise ValueError("MetricsScraper needs at least one httpx.AsyncClient")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tls_clients: dict[bool | str, list[httpx.AsyncClient]] = {}
        self._failing: dict[tuple[str, str], int] = {}

    async def __aenter__(self) -> MetricsScraper:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the clients this scraper created (never the injected ones)."""
        groups, self._tls_clients = list(self._tls_clients.values()), {}
        for clients in groups:
            for client in clients:
                await client.aclose()

    async def scrape_pool(self, pool: PoolConfig, spec: EngineMetricsSpec,
                          members: list[MemberInfo], *, now: Callable[[], float] = time.time
                          ) -> MetricsBatch:
        """Scrape the available members of ``pool``; failures are results, never dropped."""
        started = now()
        available = [member for member in members if member.available]
        try:
            plan = self._plan(pool.metrics, spec)
        except (OSError, ssl.SSLError, ValueError) as err:
            reason = f"TLS setup failed: {type(err).__name__}: {err}"[:MAX_ERROR_CHARS]
            results = [MemberMetrics(key=m.key, scraped_at=now(), ok=False, error=reason)
                       for m in available]
        else:
            results = list(await asyncio.gather(
                *(self._scrape_member(plan, pool.metrics, member, now) for member in available)
            ))
        self._log_summary(pool, results)
        return MetricsBatch(pool=pool.name, partition=pool.partition, members=results,
                            round_started_at=started)

    def _plan(self, metrics: MetricsConfig, spec: EngineMetricsSpec) -> _PoolPlan:
        headers: dict[str, str] = {}
        if self.user_agent:
            headers["User-Agent"] = self.user_agent
        secrets: list[str] = []
        if metrics.metric_user:
            password = metrics.basic_password()
            token = base64.b64encode(f"{metrics.metric_user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            secrets += [password, token]
        elif bearer := metrics.bearer():
            headers["Authorization"] = f"Bearer {bearer}"
            secrets.append(bearer)
        return _PoolPlan(
            clients=self._clients_for(metrics),
            headers=headers,
            timeout=metrics.timeout,
            selector=SampleSelector(wanted_names(spec)),
            spec=spec,
            secrets=tuple(secret for secret in secrets if secret),
        )

    def _clients_for(self, metrics: MetricsConfig) -> Sequence[httpx.AsyncClient]:
        if metrics.schema == "http" or metrics.verify is True:
            return self._clients
        clients = self._tls_clients.get(metrics.verify)
        if clients is None:
            verify: bool | ssl.SSLContext = (
                False if metrics.verify is False
                else ssl.create_default_context(cafile=metrics.verify)
            )
            clients = [new_client(verify=verify) for _ in self._clients]
            self._tls_clients[metrics.verify] = clients
        return clients

    async def _scrape_member(self, plan: _PoolPlan, metrics: MetricsConfig, member: MemberInfo,
                             now: Callable[[], float]) -> MemberMetrics:
        port = metrics.port or member.port
        path = metrics.path if metrics.path.startswith("/") else "/" + metrics.path
        url = f"{metrics.schema}://{url_host(member.host)}:{port}{path}"
        async with self._slots:
            try:
                client = plan.clients[zlib.crc32(member.key.encode()) % len(plan.clients)]
                async with asyncio.timeout(plan.timeout):
                    body = await self._fetch(client, plan, url)
                scraped_at = now()
                series = plan.selector.parse(body.decode("utf-8", errors="replace"))
                figures = extract(series, plan.spec)
                if not figures.found and figures.asleep_reason is None:
                    raise _ScrapeFailed(NO_ENGINE_METRICS)
                asleep = figures.asleep_reason
                if asleep is None and plan.spec.asleep_probe is not None:
                    asleep = await self._probe_asleep(client, plan, metrics, member,
                                                      plan.spec.asleep_probe)
            except Exception as err:  # every failure becomes a published ok=False result
                error = _redact(_describe(err, plan.timeout), plan.secrets)
                log.debug("scrape %s (%s) failed: %s", member.key, url, error,
                          exc_info=error.startswith("internal error"))
                return MemberMetrics(key=member.key, scraped_at=now(), ok=False, error=error)
        return MemberMetrics(
            key=member.key, scraped_at=scraped_at, ok=True,
            waiting_queue=figures.waiting_queue, running_req=figures.running_req,
            cache_usage=figures.cache_usage, extra=figures.extra,
            asleep=asleep is not None, asleep_reason=asleep,
        )

    async def _probe_asleep(self, client: httpx.AsyncClient, plan: _PoolPlan,
                            metrics: MetricsConfig, member: MemberInfo, probe: AsleepProbe
                            ) -> str | None:
        """The probe's verdict: a reason when it answers ``true``; None otherwise or on failure."""
        url = f"{metrics.schema}://{url_host(member.host)}:{member.port}{probe.path}"
        try:
            async with asyncio.timeout(plan.timeout):
                body = await self._fetch(client, plan, url)
            answer = msgspec.json.decode(body)
        except msgspec.DecodeError:
            log.debug("asleep probe %s (%s): the answer is not JSON", member.key, url)
            return None
        except Exception as err:  # a probe that fails says nothing about sleep
            log.debug("asleep probe %s (%s) failed: %s", member.key, url,
                      _redact(_describe(err, plan.timeout), plan.secrets))
            return None
        value = answer.get(probe.field) if isinstance(answer, dict) else None
        if value is True:
            return f"GET {probe.path} {probe.field}=true"
        if not isinstance(value, bool):
            log.debug("asleep probe %s (%s): %r is not a JSON boolean", member.key, url,
                      probe.field)
        return None

    async def _fetch(self, client: httpx.AsyncClient, plan: _PoolPlan, url: str) -> bytes:
        request = client.build_request("GET", url, headers=plan.headers, timeout=plan.timeout)
        response = await client.send(request, stream=True)
        try:
            if not response.is_success:
                raise _ScrapeFailed(f"HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _ScrapeFailed(f"body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    def _log_summary(self, pool: PoolConfig, results: list[MemberMetrics]) -> None:
        failing = [result.error or "" for result in results if not result.ok]
        previous = self._failing.get(pool.ident, 0)
        self._failing[pool.ident] = len(failing)
        if len(failing) == previous:
            return
        if failing:
            kinds = collections.Counter(error.split(":", 1)[0] for error in failing)
            detail = ", ".join(f"{kind}: {count}" for kind, count in kinds.most_common())
            log.warning("pool %s:%s: %d of %d members failing metrics scrape (%s)",
                        pool.name, pool.partition, len(failing), len(results), detail)
        else:
            log.info("pool %s:%s: all %d members scraped OK again",
                     pool.name, pool.partition, len(results))


def _describe(err: Exception, timeout: float) -> str:
    """A short, operator-readable reason for a failed scrape."""
    if isinstance(err, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout:g}s"
    if isinstance(err, _ScrapeFailed):
        return str(err)
    if isinstance(err, PromParseError):
        return f"parse error: {err}"[:MAX_ERROR_CHARS]
    if isinstance(err, httpx.ConnectError):
        return f"connect failed: {err or 'no detail'}"[:MAX_ERROR_CHARS]
    if isinstance(err, httpx.HTTPError):
        return f"{type(err).__name__}: {err or 'no detail'}"[:MAX_ERROR_CHARS]
    return f"internal error: {type(err).__name__}"


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
