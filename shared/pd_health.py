"""Active health checks of PD members: ``GET /health`` with a timeout, and thresholds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import httpx

from shared.members import url_host
from shared.pd_config import PDSettings
from shared.pd_members import PDMember
from shared.pd_registry import HealthRecord

log = logging.getLogger("llmsched.pd.health")


async def probe(client: httpx.AsyncClient, member: PDMember, path: str,
                timeout_s: float) -> str | None:
    """None when ``GET path`` answers 200 within ``timeout_s``, else what went wrong."""
    url = f"http://{url_host(member.host)}:{member.port}{path}"
    try:
        response = await client.get(url, timeout=timeout_s)
    except httpx.TimeoutException:
        return f"no answer within {timeout_s:g}s"
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    if response.status_code != 200:
        return f"answered {response.status_code}"
    return None


def advance(old: HealthRecord | None, error: str | None, now: float,
            settings: PDSettings) -> HealthRecord:
    """The record after one check; the first check of a member decides at once."""
    ok = error is None
    if old is None or old.checked_at is None:
        return HealthRecord(healthy=ok, last_error=error, checked_at=now, changed_at=now)
    record = HealthRecord(healthy=old.healthy, failures=old.failures, successes=old.successes,
                          last_error=error, checked_at=now, changed_at=old.changed_at)
    if old.healthy:
        record.failures = 0 if ok else old.failures + 1
        if record.failures >= settings.health_failure_threshold:
            record.healthy, record.failures, record.changed_at = False, 0, now
    else:
        record.successes = old.successes + 1 if ok else 0
        if record.successes >= settings.health_success_threshold:
            record.healthy, record.successes, record.changed_at = True, 0, now
    return record


async def check_members(client: httpx.AsyncClient, pool: str, members: Sequence[PDMember],
                        old: Mapping[str, HealthRecord], settings: PDSettings,
                        now: float) -> dict[str, HealthRecord]:
    """One check of each member, all at once; logs each change of health (one line)."""
    errors = await asyncio.gather(*(probe(client, m, settings.health_path,
                                          settings.health_check_timeout) for m in members))
    out: dict[str, HealthRecord] = {}
    for member, error in zip(members, errors, strict=True):
        before = old.get(member.key)
        after = advance(before, error, now, settings)
        out[member.key] = after
        if before is None or before.checked_at is None:
            if not after.healthy:
                log.warning("PD pool %s: %s %s (%s) unhealthy at its first check: %s", pool,
                            member.role, member.id, member.key, error)
        elif before.healthy and not after.healthy:
            log.warning("PD pool %s: %s %s (%s) unhealthy after %d failed checks, out of "
                        "routing: %s", pool, member.role, member.id, member.key,
                        settings.health_failure_threshold, error)
        elif not before.healthy and after.healthy:
            log.info("PD pool %s: %s %s (%s) healthy again after %d good checks, back in "
                     "routing", pool, member.role, member.id, member.key,
                     settings.health_success_threshold)
    return out
