"""Demo traffic: keeps each target busy at a concurrency that follows a slow wave.

``python -m services.doubles.demo_load --targets URL,URL --model M --port P`` sends
OpenAI chat requests to every engine; ``--gateway URL --aliases a,b`` adds one target per
model alias, sent through llmsched's gateway on a wave of its own (``--gateway-low/high/
period``), so the autoscaler has something to follow. ``PUT /_control {"target": 0,
"concurrency": 30}`` on port P pins one target's concurrency (``{"auto": true}`` returns it
to the wave).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field

import httpx
import msgspec
from fastapi import FastAPI, HTTPException

from shared.http_server import start_app
from shared.logs import setup_logging

log = logging.getLogger("llmsched.demo_load")


@dataclass
class Target:
    """One engine and the concurrency it is driven at."""

    url: str
    phase: float
    model: str = ""
    low: int = 1
    high: int = 12
    period_s: float = 90.0
    pinned: int | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sent: int = 0
    errors: int = 0

    def wanted(self, now: float) -> int:
        if self.pinned is not None:
            return self.pinned
        x = 0.5 + 0.5 * math.sin(2 * math.pi * (now / self.period_s + self.phase))
        return round(self.low + (self.high - self.low) * x)


class Control(msgspec.Struct, forbid_unknown_fields=True):
    target: int
    concurrency: int | None = None
    auto: bool = False


class DemoLoad:
    """Adjusts one sender task per wanted concurrency slot, per target."""

    def __init__(self, targets: list[Target], *, max_tokens: int) -> None:
        self.targets = targets
        self.max_tokens = max_tokens
        self.http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200))

    async def _sender(self, target: Target) -> None:
        body = {"model": target.model, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": "Tell me about load balancing."}]}
        while True:
            try:
                r = await self.http.post(f"{target.url}/v1/chat/completions", json=body)
                target.sent += 1
                if r.status_code != 200:
                    target.errors += 1
                    await asyncio.sleep(0.5)
            except httpx.HTTPError:
                target.errors += 1
                await asyncio.sleep(0.5)

    def adjust(self) -> None:
        now = time.time()
        for t in self.targets:
            want = t.wanted(now)
            while len(t.tasks) < want:
                t.tasks.append(asyncio.create_task(self._sender(t)))
            while len(t.tasks) > want:
                t.tasks.pop().cancel()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.adjust()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        for t in self.targets:
            for task in t.tasks:
                task.cancel()
        await self.http.aclose()

    def app(self) -> FastAPI:
        app = FastAPI(title="llmsched demo load")

        @app.get("/_control")
        async def state() -> dict[str, object]:
            return {"targets": [{"url": t.url, "model": t.model, "concurrency": len(t.tasks),
                                 "pinned": t.pinned, "sent": t.sent, "errors": t.errors}
                                for t in self.targets]}

        @app.put("/_control")
        async def control(body: dict[str, object]) -> dict[str, object]:
            try:
                c = msgspec.convert(body, Control)
            except msgspec.ValidationError as err:
                raise HTTPException(400, str(err)) from None
            if not 0 <= c.target < len(self.targets):
                raise HTTPException(400, f"target must be 0..{len(self.targets) - 1}")
            if c.concurrency is not None and not 0 <= c.concurrency <= 200:
                raise HTTPException(400, "concurrency must be 0..200")
            self.targets[c.target].pinned = None if c.auto else c.concurrency
            self.adjust()
            return await state()

        return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo_load", description=__doc__)
    parser.add_argument("--targets", default="", help="comma-separated engine base URLs")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True, help="control port")
    parser.add_argument("--period", type=float, default=90.0, help="wave period, seconds")
    parser.add_argument("--low", type=int, default=1)
    parser.add_argument("--high", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--gateway", help="llmsched API base URL for alias traffic")
    parser.add_argument("--aliases", default="", help="comma-separated model aliases")
    parser.add_argument("--gateway-period", type=float, default=240.0)
    parser.add_argument("--gateway-low", type=int, default=0)
    parser.add_argument("--gateway-high", type=int, default=6)
    args = parser.parse_args(argv)
    setup_logging("demo-load")
    engines = [u for u in args.targets.split(",") if u]
    targets = [Target(url.rstrip("/"), i / max(1, len(engines)), model=args.model,
                      low=args.low, high=args.high, period_s=args.period)
               for i, url in enumerate(engines)]
    aliases = [a for a in args.aliases.split(",") if a]
    if args.gateway:
        targets += [Target(args.gateway.rstrip("/"), i / max(1, len(aliases)), model=alias,
                           low=args.gateway_low, high=args.gateway_high,
                           period_s=args.gateway_period) for i, alias in enumerate(aliases)]
    load = DemoLoad(targets, max_tokens=args.max_tokens)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = await start_app(load.app(), port=args.port)
        print(f"demo load on {len(load.targets)} targets; control {server.url}/_control",
              flush=True)
        log.info("Demo load on %d engines (wave %g s, concurrency %d..%d) and aliases %s through"
                 " %s (wave %g s, %d..%d); control %s/_control", len(engines), args.period,
                 args.low, args.high, ",".join(aliases) or "-", args.gateway or "-",
                 args.gateway_period, args.gateway_low, args.gateway_high, server.url)
        try:
            await load.run(stop)
        finally:
            await server.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
