"""Prefill/decode pools in the config file: their keys, checks, and the two role pools each becomes.

A pool with ``roles`` is routed as two ordinary pools, ``<name>@prefill`` and
``<name>@decode``: the collector, the scheduler (route, in-flight counts, profiles) and
the status APIs treat each like any other pool; only the gateway knows they pair up.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["prefill", "decode"]
ROLES: tuple[Role, ...] = ("prefill", "decode")
STRATEGIES = ("round_robin", "least_load", "weighted")
"""The seed's strategies; each is a mode type (any ``modes`` entry may be named instead)."""
ROLE_SEPARATOR = "@"


def role_pool(pool: str, role: str) -> str:
    """The scheduler pool that routes ``role`` of PD pool ``pool``."""
    return f"{pool}{ROLE_SEPARATOR}{role}"


class PDInstanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One instance as the seed's JSON lists it."""

    id: str
    host: str
    port: int


MemberEntry = str | PDInstanceConfig
"""``"host:port"`` (its id is the key) or ``{id, host, port}``."""


class PDRolesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The members of each role listed in the file (more may be registered at run time)."""

    prefill: list[MemberEntry] = []
    decode: list[MemberEntry] = []


class PDSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a PD pool routes, checks and retries; the seed's keys and defaults."""

    strategy: str | None = None
    """``round_robin``, ``least_load`` (default) or ``weighted``, or the name of a ``modes``
    entry (e.g. a greybox mode); default: the pool's ``mode``, else ``least_load``."""
    prefill_strategy: str | None = None
    """The prefill role's strategy when it differs from ``strategy``."""
    decode_strategy: str | None = None
    """The decode role's strategy when it differs from ``strategy``."""
    health_check_interval: float = 5.0
    """Seconds between active health checks (``GET health_path``) of every member."""
    health_check_timeout: float = 2.0
    """A check without an answer within this many seconds failed."""
    health_failure_threshold: int = 3
    """Consecutive failed checks that take a healthy member out of routing."""
    health_success_threshold: int = 2
    """Consecutive good checks that bring an unhealthy member back."""
    health_path: str = "/health"
    max_retries: int = 3
    """Other instances of the failing role tried before the client gets 502."""
    drain_timeout: float = 30.0
    """Seconds a drained member's requests in flight have to finish."""
    load_weight: float = 0.5
    """``weighted``: weight of the load score (requests in flight plus queued)."""
    kv_cache_weight: float = 0.3
    """``weighted``: weight of the KV-cache score (1 − usage)."""
    latency_weight: float = 0.2
    """``weighted``: weight of the latency score (recent mean TTFT)."""

    def strategy_for(self, role: str, pool_mode: str | None) -> str:
        """The strategy (mode name or built-in) that routes ``role``."""
        own = self.prefill_strategy if role == "prefill" else self.decode_strategy
        return own or self.strategy or pool_mode or "least_load"


def entry_id(entry: MemberEntry) -> str:
    """The id of a listed member: its own, or its ``host:port``."""
    return entry if isinstance(entry, str) else entry.id


def entry_address(entry: MemberEntry) -> str:
    """``host:port`` of a listed member (IPv6 hosts bracketed)."""
    if isinstance(entry, str):
        return entry
    host = f"[{entry.host}]" if ":" in entry.host and not entry.host.startswith("[") \
        else entry.host
    return f"{host}:{entry.port}"
