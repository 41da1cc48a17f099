"""Stopping background tasks for sure.

``task.cancel()`` asks once. A library can lose that request: anyio's cancel scopes (under
httpx) can swallow a native cancel that lands in the same loop pass as their own, and
Python 3.11's ``asyncio.wait_for`` can return a result instead of raising it. A loop that
lost its cancel keeps running, and a shutdown that waits for it never ends. So a service
stops its tasks with :func:`cancel_and_wait`, which asks again until they end, and says
which one ignored the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("llmsched.tasks")

RETRY_S = 0.5
"""How long a cancelled task gets before it is cancelled again."""
GIVE_UP_S = 10.0
"""After this, the tasks still running are left to the process's exit (and logged)."""


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, retry_s: float = RETRY_S,
                          give_up_s: float = GIVE_UP_S) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait until every one has ended; returns those still running
    after ``give_up_s`` (normally none). A task that outlives a cancel by ``retry_s`` is
    cancelled again, with a warning naming it."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    warned: set[asyncio.Future[Any]] = set()
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            log.error("%d task(s) still running %gs after being cancelled: %s", len(pending),
                      give_up_s, ", ".join(sorted(_name(t) for t in pending)))
            return pending
        _done, pending = await asyncio.wait(pending, timeout=min(retry_s, left))
        for task in pending:
            if task not in warned:
                warned.add(task)
                log.warning("Task %s ignored a cancel; cancelling it again", _name(task))
            task.cancel()
    return set()


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
