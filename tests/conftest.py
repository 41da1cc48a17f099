"""Fixtures shared by every test: real NATS and Redis servers, one prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.servers import nats_for_tests, redis_for_tests


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with nats_for_tests() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_for_tests() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    """A fresh subject/key prefix so tests sharing one server never see each other."""
    return "t" + uuid.uuid4().hex[:12]
