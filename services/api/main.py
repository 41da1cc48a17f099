"""Composition root of the API service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid

import msgspec
import uvicorn
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.api.admin import admin_router
from services.api.app import ApiState, create_app
from services.api.fastpath import SelectFastPath
from services.api.gateway.admission import AdmissionLines, LineSettings
from services.api.gateway.bus import NatsEvents, NatsRouter
from services.api.gateway.catalog import Catalog
from services.api.gateway.front import GatewayFront
from services.api.gateway.hold import HoldQueues, HoldSettings
from services.api.gateway.local import LocalRouting, start_local_routing
from services.api.gateway.metrics import GatewayMetrics, OngoingCollector
from services.api.gateway.openapi_docs import gateway_docs_router
from services.api.gateway.proxy import Gateway, GatewaySettings, Router
from services.api.gateway.route_keys import RouteKeys
from services.api.gateway.upstream import Upstream
from services.api.metrics import SelectMetrics
from services.api.pd_admin import PDAdmin, pd_router
from services.api.records import records_router
from services.api.scheduler_client import SchedulerClient
from services.api.status_page import status_page_router
from services.api.workers import workers_router
from shared.auth import AdminAuth
from shared.bus import connect_nats
from shared.coalesce import CoalescingHttpToolsProtocol
from shared.config import Config, GatewayConfig, LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.http_server import QuietServer, bind_socket, socket_from_fd
from shared.logs import set_level
from shared.metrics import metrics_router, nats_drops, new_registry
from shared.model_registry import ModelRegistry
from shared.pd_registry import PDRegistry
from shared.pd_source import PDSource
from shared.registry_view import RegistryView, announce
from shared.runtime import run_service
from shared.scaling import ScalingLog
from shared.state import RedisStateStore
from shared.subjects import RedisKeys, Subjects
from shared.tasks import cancel_and_wait
from shared.workers import WorkerRegistry

log = logging.getLogger("llmsched.api")

GRACEFUL_S = 15
"""How long a stopping API waits for requests in flight (``llmsched up`` waits longer)."""
ACCEPTED_GRACE_S = 0.3
"""After closing the listener: time for just-accepted connections to read their request."""


def run(loaded: LoadedConfig, listen_fd: int | None = None) -> int:
    """``llmsched api [--listen-fd N]``: N is a listening socket inherited from a supervisor."""
    sock: socket.socket | None = None
    if listen_fd is not None:
        try:
            sock = socket_from_fd(listen_fd)
        except ValueError as err:
            print(f"llmsched api: --listen-fd: {err}", file=sys.stderr)
            return 2

    async def serve_on(loaded: LoadedConfig, stop: asyncio.Event) -> None:
        await serve(loaded, stop, sock=sock)

    return run_service("api", loaded, serve_on)


async def serve(loaded: LoadedConfig, stop: asyncio.Event, *, nats_url: str | None = None,
                redis_url: str | None = None, port: int | None = None,
                sock: socket.socket | None = None) -> None:
    """Serve HTTP on ``sock``, else on ``global.api_host:global.api_port``, until ``stop``.

    On ``stop`` the listener closes first and requests in flight finish (uvicorn's graceful
    shutdown, at most GRACEFUL_S) before the bus and the store are closed.
    """
    cfg = loaded.config
    prom = new_registry()
    drops = nats_drops(prom)
    nc = await connect_nats("api", nats_url, on_dropped=drops)
    store = RedisStateStore(redis_url, keys=RedisKeys(cfg.global_.prefix))
    subjects = Subjects(cfg.global_.prefix)
    client = SchedulerClient(nc, subjects, cfg.global_.select_timeout_ms / 1000.0)
    state = ApiState(scheduler=client, config=cfg, config_version=loaded.version, store=store)
    state.set_config(cfg, loaded.version)
    watcher = ConfigWatcher(loaded)
    registry = WorkerRegistry(redis_url, prefix=cfg.global_.prefix,
                              lost_after_s=cfg.global_.worker_lost_after_s)
    models = ModelRegistry(registry.redis, prefix=cfg.global_.prefix)
    view = RegistryView(models, registry)
    gateway_id = f"api-{socket.gethostname()}-{os.getpid()}"
    local: LocalRouting | None = None
    router: Router = NatsRouter(client)
    gateway_metrics = GatewayMetrics(prom)
    if cfg.gateway.decide == "local":
        local = await start_local_routing(cfg, store, f"{gateway_id}-{uuid.uuid4().hex[:6]}",
                                          stop, nats_url=nats_url, redis_url=redis_url,
                                          on_dropped=drops, on_decided=gateway_metrics.decided)
        router = local.router
    events = NatsEvents(nc, subjects, gateway_id,
                        outcomes=local.outcome if local is not None else None)
    catalog = Catalog(cfg, lambda: view.models)
    hold = HoldQueues(_hold_settings(cfg.gateway), events.demand)
    upstream = Upstream()
    admission = AdmissionLines(lambda pool: _line_settings(state.config, pool))
    gateway = Gateway(_gateway_settings(cfg.gateway), catalog, router, upstream,
                      events, hold, admission, metrics=gateway_metrics)
    prom.register(OngoingCollector(lambda: gateway.ongoing,
                                   lambda: gateway.settings.max_ongoing))
    gateway.keys = route_keys = RouteKeys(cfg)
    view.listeners.append(hold.notify_all)

    async def announce_change(kind: str, name: str, op: str) -> None:
        await announce(nc, subjects.registry_changed, kind, name, op)

    async def on_lost(worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            await announce_change("worker", worker_id, "lost")

    def on_config(old: LoadedConfig, new: LoadedConfig) -> None:
        state.set_config(new.config, new.version)
        catalog.set_config(new.config)
        route_keys.set_config(new.config)
        front.api_keys = _api_keys(new.config.gateway)
        gateway.settings = _gateway_settings(new.config.gateway)
        hold.settings = _hold_settings(new.config.gateway)
        client.timeout_s = new.config.global_.select_timeout_ms / 1000.0
        if local is not None:
            local.apply_config(new.config)
        if new.config.gateway.decide != old.config.gateway.decide:
            log.warning("gateway.decide changes take effect after a restart")
        set_level(new.config.global_.effective_log_level)
        g_old, g_new = old.config.global_, new.config.global_
        if (g_old.api_host, g_old.api_port, g_old.prefix) != (g_new.api_host, g_new.api_port,
                                                              g_new.prefix):
            log.warning("api_host/api_port/prefix changes take effect after a restart")

    watcher.subscribe(on_config)
    admin = AdminAuth.from_env()
    fastapi_app = create_app(state)
    fastapi_app.include_router(workers_router(registry, announce=announce_change))
    fastapi_app.include_router(records_router(client))
    fastapi_app.include_router(gateway_docs_router())
    pd_source = PDSource(PDRegistry(registry.redis, cfg.global_.prefix), registry)
    fastapi_app.include_router(pd_router(PDAdmin(lambda: state.config, pd_source, client), admin))
    fastapi_app.include_router(metrics_router(prom))
    fastapi_app.include_router(status_page_router())
    fastapi_app.include_router(admin_router(models, view, ScalingLog(registry.redis,
                                                                      cfg.global_.prefix),
                                            client, announce_change, admin))
    front = GatewayFront(SelectFastPath(fastapi_app, state, SelectMetrics(prom)), gateway,
                         catalog, _api_keys(cfg.gateway))
    app = front
    changes = await nc.subscribe(subjects.registry_changed, cb=view.on_event)
    ended = msgspec.json.Decoder(_PoolOf | list[_PoolOf])  # one outcome, or a batch

    async def on_outcome(msg: Msg) -> None:
        if admission.busy:  # only while requests wait in a line: a slot may be free now
            with contextlib.suppress(msgspec.DecodeError):
                done = ended.decode(msg.data)
                for one in done if isinstance(done, list) else [done]:
                    admission.freed((one.pool, one.partition))

    outcomes: Subscription | None = None
    if local is None:
        outcomes = await nc.subscribe(subjects.request_outcome, cb=on_outcome)
    else:  # told once the in-process core let the request go (no race with the decision)
        local.admission = admission
    await view.refresh()
    if sock is None:
        sock = bind_socket(cfg.global_.api_host,
                           port if port is not None else cfg.global_.api_port)
    server = QuietServer(uvicorn.Config(app, log_config=None, log_level="warning",
                                        http=CoalescingHttpToolsProtocol,
                                        access_log=False, lifespan="off", timeout_keep_alive=30,
                                        timeout_graceful_shutdown=GRACEFUL_S))
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    watch_task = asyncio.create_task(watcher.run(stop))
    registry_task = asyncio.create_task(registry.run(stop, on_lost))
    view_task = asyncio.create_task(view.run(stop))
    host, bound = sock.getsockname()[:2]
    log.info("API listening on http://%s:%s", host, bound)
    try:
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({server_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        await stop_accepting(server)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await server_task
        await cancel_and_wait((watch_task, registry_task, view_task))
        with contextlib.suppress(Exception):
            await changes.unsubscribe()
            if outcomes is not None:
                await outcomes.unsubscribe()
        if local is not None:
            await local.close()
        await events.close()
        await upstream.close()
        await pd_source.close()
        await registry.close()
        with contextlib.suppress(Exception):
            await nc.drain()
        await store.close()


async def stop_accepting(server: uvicorn.Server) -> None:
    """Close the listener, then give connections it already accepted time to start a request.

    uvicorn's shutdown closes every connection with no request in progress; one accepted a
    moment ago whose request is still unread would be reset instead of answered.
    """
    for listener in server.servers:
        listener.close()
    await asyncio.sleep(ACCEPTED_GRACE_S)


def _gateway_settings(g: GatewayConfig) -> GatewaySettings:
    return GatewaySettings(max_ongoing=g.max_ongoing(), retries=g.retries,
                           first_byte_timeout_s=g.first_byte_timeout_s,
                           inflight_ttl_s=g.inflight_ttl_s)


def _hold_settings(g: GatewayConfig) -> HoldSettings:
    return HoldSettings(max_waiting=g.hold_queue_size, timeout_s=g.hold_timeout_s)


class _PoolOf(msgspec.Struct):
    pool: str
    partition: str


def _line_settings(config: Config, pool: tuple[str, str]) -> LineSettings:
    """The admission line of ``pool``: the gateway's bounds, the pool's greybox order."""
    cfg = next((p for p in config.pools if p.ident == pool), None)
    if cfg is None:
        cfg = config.implicit_pool(pool[0], "vllm")
    g = config.mode_for(cfg).greybox
    return LineSettings(max_waiting=config.gateway.hold_queue_size,
                        timeout_s=config.gateway.hold_timeout_s,
                        slo_s=None if g.ttft_slo_ms is None else g.ttft_slo_ms / 1000,
                        max_wait_s=g.max_queue_wait_s,
                        next_try_s=config.gateway.hold_next_try_ms / 1000)


def _api_keys(g: GatewayConfig) -> frozenset[str]:
    """The keys /v1 requires; a named variable that is unset leaves /v1 open: say so."""
    keys = g.api_keys()
    if g.api_keys_env and not keys:
        log.warning("gateway.api_keys_env names %s, which is unset or empty: /v1/* needs no "
                    "key", g.api_keys_env)
    return keys
