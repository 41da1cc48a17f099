"""Leader election among autoscaler processes: the shared lease under the autoscaler's name.

Only the holder acts; when it dies its lease expires and another process takes it
within one ``ttl_s`` (``shared/lease.py``).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from shared.lease import Lease as SharedLease

log = logging.getLogger("llmsched.autoscaler.lease")


class Lease(SharedLease):
    """The autoscaler's leader lease; changes logged on ``llmsched.autoscaler.lease``."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, ttl_s: float) -> None:
        super().__init__(redis, key, holder, ttl_s, role="autoscaler", logger=log)
