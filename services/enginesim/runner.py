"""Real-time driver: runs the model's steps on the event loop and wakes waiting HTTP handlers."""

from __future__ import annotations

import asyncio
import contextlib

from services.enginesim.clock import Clock, LoopClock
from services.enginesim.model import EngineModel, SimRequest

# Past this lag behind the nominal schedule the engine restarts its timeline from "now"
# instead of trying to catch up (an idle engine, or a starved event loop).
CATCH_UP_SLACK = 0.02


class TokenSink:
    """Tells one handler that its request produced tokens or finished."""

    __slots__ = ("_done", "_event")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._done = asyncio.Event()

    def notify(self, finished: bool) -> None:
        """Wake the waiting handler."""
        self._event.set()
        if finished:
            self._done.set()

    async def wait_done(self) -> None:
        """Wait until the request has finished."""
        await self._done.wait()

    async def wait(self) -> None:
        """Wait for the next notification."""
        await self._event.wait()
        self._event.clear()


class EngineRunner:
    """Owns the model on the event loop; handlers submit requests and await their sinks."""

    def __init__(self, model: EngineModel, clock: Clock | None = None) -> None:
        self.model = model
        self.clock: Clock = clock or LoopClock()
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.egress = 0.0
        """Moving average of how long a first token takes to leave the handler."""

    def start(self) -> None:
        """Start the step loop on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="enginesim-steps")

    async def stop(self) -> None:
        """Stop the step loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, req: SimRequest, received_at: float | None = None) -> TokenSink:
        """Queue a request; its sink is notified on every token and on finish.

        The front-end floor is a total, as a real engine's is: the time this server already
        spent on the request (since ``received_at``) and the time its first token will take
        to leave (``egress``) count towards it.
        """
        sink = TokenSink()
        req.sink = sink
        now = self.clock.now()
        spent = (now - received_at if received_at is not None else 0.0) + self.egress
        self.model.add(req, now, spent)
        self._kick.set()
        return sink

    def record_egress(self, seconds: float) -> None:
        """A first token left its handler ``seconds`` after the model produced it."""
        self.egress = min(0.005, max(0.0, 0.9 * self.egress + 0.1 * seconds))

    def abort(self, req: SimRequest) -> None:
        """Abort a request (client went away)."""
        if self.model.abort(req, self.clock.now()):
            self._notify(req)
            if not self.model.running:
                self._drained.set()

    async def drained(self) -> None:
        """Return once no request is running (a ``wait``-mode sleep)."""
        while self.model.running:
            self._drained.clear()
            await self._drained.wait()

    def kick(self) -> None:
        """Re-check for work (after a wake-up)."""
        self._kick.set()

    @staticmethod
    def _notify(req: SimRequest) -> None:
        sink = req.sink
        if isinstance(sink, TokenSink):
            sink.notify(req.finish_reason is not None)

    def notify_all(self, reqs: list[SimRequest]) -> None:
        """Wake the handlers of requests finished outside a step (sleep aborts)."""
        for req in reqs:
            self._notify(req)

    async def _run(self) -> None:
        model = self.model
        clock = self.clock
        busy_until = clock.now()
        # Timers fire late (millisecond granularity, a busy CPU): wake that much early, so
        # tokens leave on the model's schedule on average, as they do in virtual time.
        late = 0.0
        while True:
            now = clock.now()
            start = busy_until if now - busy_until < CATCH_UP_SLACK else now
            duration = model.begin_step(start)
            if duration is None:
                wake_at = model.next_wakeup()
                self._kick.clear()
                timeout = None if wake_at is None else max(0.0, wake_at - now - late)
                try:
                    await asyncio.wait_for(self._kick.wait(), timeout)
                    busy_until = clock.now()
                except TimeoutError:
                    # Woken for a request that became ready: the step starts when it did.
                    woke = clock.now()
                    late = _track(late, woke - (wake_at or woke) + late)
                    busy_until = min(woke, wake_at) if wake_at is not None else woke
                continue
            end = start + duration
            target = end - late
            await clock.sleep_until(target)
            late = _track(late, clock.now() - target)
            for req in model.finish_step(end):
                self._notify(req)
            if not model.running:
                self._drained.set()
            busy_until = end


def _track(late: float, overshoot: float) -> float:
    """Moving average of how late timers fire, within [0, 5 ms]."""
    return min(0.005, max(0.0, 0.9 * late + 0.1 * overshoot))
