"""Where integration tests get NATS and Redis: env URLs, then Docker, then embedded wheels."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from shared.embedded import EmbeddedServer, nats_server, valkey_server

log = logging.getLogger("tests.servers")


def docker_available() -> bool:
    """True when a Docker engine answers (testcontainers can then run the servers)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def nats_for_tests() -> Iterator[str]:
    """NATS_URL if set, else a NATS container, else the embedded nats-server."""
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    if docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer() as container:
            yield container.nats_uri()
        return
    server = nats_server().start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def redis_for_tests() -> Iterator[str]:
    """REDIS_URL if set, else a Redis container, else the embedded valkey-server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer() as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    server = valkey_server().start()
    try:
        yield server.url
    finally:
        server.stop()


def private_valkey() -> EmbeddedServer:
    """A Valkey the test owns (to stop and restart it); always embedded."""
    return valkey_server()
