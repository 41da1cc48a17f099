"""Process plumbing shared by every service: logging, event loop, signals, stop event."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from shared.config import LoadedConfig
from shared.logs import setup_logging
from shared.tasks import GIVE_UP_S, cancel_and_wait

log = logging.getLogger("llmsched")

Serve = Callable[[LoadedConfig, asyncio.Event], Awaitable[None]]


def run_service(name: str, loaded: LoadedConfig, serve: Serve, *,
                stop_timeout_s: float = GIVE_UP_S) -> int:
    """Run ``serve`` until SIGINT/SIGTERM; returns the process exit code.

    Tasks still running when ``serve`` returns are cancelled (again, if they lose it); if
    some are still running ``stop_timeout_s`` later the process exits 1 at once, naming
    them, rather than wait for ever in the event loop's own final cancel.
    """
    setup_logging(name, loaded.config.global_.effective_log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        log.info("%s starting (config %s, version %s)", name, loaded.path, loaded.version)
        # The import-time heap now, before anything is served: the pass at 3 s then only
        # walks what start-up added, so it cannot stall requests past their budget.
        freeze_heap()
        loop.call_later(3.0, freeze_heap)
        await serve(loaded, stop)
        others = asyncio.all_tasks() - {asyncio.current_task()}
        left = await cancel_and_wait(others, give_up_s=stop_timeout_s)
        if left:
            log.error("%s stopped, but %d task(s) would not end; exiting without them", name,
                      len(left))
            logging.shutdown()
            os._exit(1)
        log.info("%s stopped", name)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def freeze_heap() -> None:
    """Move start-up objects out of the GC's reach and collect less often.

    A long-running service's heap is mostly import-time objects; without this, full
    collections of that heap stall the event loop for tens of milliseconds under load.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    except TimeoutError:
        return False
    return True
