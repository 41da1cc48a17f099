"""Opt-in: the gateway and the autoscaler drive a real vLLM: scale from zero, sleep, wake.

The whole system runs in-process on embedded NATS/Redis with one real worker whose default
backend is ``vllm-process``. A registered tiny model (min_replicas 0) gets its first real
vLLM from a request the gateway holds; the OpenAI SDK streams through the gateway; at idle
the autoscaler drains it and puts it to sleep (level 1, vLLM's dev-mode /sleep); a request
for the sleeping alias makes the autoscaler wake it, and it is served. Run as
``LLMSCHED_VLLM_PYTHON=... pytest -m real_vllm tests/real_vllm -s`` to see the timings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.fleet import Fleet, MakeFleet
from tests.integration.system import wait_until

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(1500)]

ALIAS = "tiny"
COLD_START_S = 600.0
"""A real vLLM answers /health 20–60 s after it starts on an idle 2-core box; more when busy."""
COOLDOWN_S = 45.0
"""Quiet time after each autoscaler action: the window in which SLEEP_1 is observed (the
next step down, SLEEP_2, waits this long) and the start-to-sleep minimum."""
MAX_TOKENS = 8

T = TypeVar("T")


class Seen:
    """What the test saw, printed with ``-s`` and put in every assertion message."""

    def __init__(self, fleet: Fleet, worker: Worker) -> None:
        self.fleet = fleet
        self.worker = worker
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(f"[{time.monotonic() - self.t0:7.1f}s] {line}")
        print(self.lines[-1], flush=True)

    async def instance(self) -> dict[str, Any]:
        r = await self.fleet.http.get(f"{self.worker.url}/instances")
        found: list[dict[str, Any]] = [i for i in r.json()["instances"]
                                       if i["model_alias"] == ALIAS]
        assert len(found) == 1, f"one instance of {ALIAS} expected: {found}"
        return found[0]

    async def actions(self) -> list[tuple[str, int, bool]]:
        r = await self.fleet.http.get(f"{self.fleet.api}/admin/status")
        return [(a["kind"], a["level"], a["ok"]) for a in reversed(r.json()["actions"])
                if a["alias"] == ALIAS]

    async def unless_failed(self, work: Awaitable[T]) -> T:
        """``work``'s result; fails at once (not at the hold timeout) if the engine fails."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                r = await self.fleet.http.get(f"{self.worker.url}/instances")
                failed = [i for i in r.json()["instances"] if i["state"] == "failed"]
                if failed:
                    raise AssertionError(f"the engine failed to start: {failed[0]['error']}\n"
                                         f"{await self.report()}")
                await asyncio.wait({task}, timeout=1.0)
            return task.result()
        finally:
            task.cancel()

    async def action_at(self, kind: str, since: float) -> float:
        """Seconds from ``since`` (wall clock) to the end of the last ``kind`` action."""
        r = await self.fleet.http.get(f"{self.fleet.api}/admin/status")
        times = [a["at"] for a in r.json()["actions"] if a["alias"] == ALIAS
                 and a["kind"] == kind]
        return max(times) - since if times else float("nan")

    async def report(self) -> str:
        """Timeline, autoscaler actions, the worker's instances and the engine log's tail."""
        parts = ["timeline:", *self.lines]
        try:
            parts.append(f"actions: {await self.actions()}")
            r = await self.fleet.http.get(f"{self.worker.url}/instances")
            for inst in r.json()["instances"]:
                parts.append(f"instance: {inst}")
                if inst.get("log_path"):
                    parts.append(f"engine log tail: {_tail(inst['log_path'])}")
        except (httpx.HTTPError, OSError, KeyError) as err:
            parts.append(f"(could not read more: {err})")
        return "\n".join(parts)


def _tail(path: str, size: int = 3000) -> str:
    return Path(path).read_text(errors="replace")[-size:]


async def _chat(client: openai.AsyncOpenAI, content: str) -> tuple[str, int | None, float]:
    """Streamed chat with usage: (text, completion tokens, seconds to the first content)."""
    started = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.monotonic() - started
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    return ("".join(pieces), usage.completion_tokens if usage else None,
            first if first is not None else float("nan"))


async def test_gateway_and_autoscaler_drive_a_real_vllm(
        make_fleet: MakeFleet, vllm_python: str, model_dir: str, vllm_env: dict[str, str],
        tmp_path: Path) -> None:
    # The autoscaler's own scaling settings come from the registration below.
    fleet = await make_fleet(worker=False, gateway={"hold_timeout_s": COLD_START_S,
                                                    "first_byte_timeout_s": 300})
    worker = await Worker(WorkerOptions(
        port=0, manager_url=fleet.api, worker_id="real-vllm", heartbeat_interval_s=0.5,
        settings=WorkerSettings(log_dir=tmp_path / "worker-logs",
                                default_backend="vllm-process",
                                vllm_python=vllm_python))).start()
    fleet.workers.append(worker)  # the fixture stops it (and its engine) at the end
    seen = Seen(fleet, worker)
    await fleet.register({
        "alias": ALIAS, "model_name": model_dir, "load_format": "dummy", "dtype": "float32",
        "max_model_len": 512, "max_num_seqs": 8, "enforce_eager": True,
        "start_timeout_s": COLD_START_S, "env": vllm_env,
        "autoscaling": {"min_replicas": 0, "max_replicas": 1, "scale_interval_s": 1.0,
                        "down_after_s": 3.0, "cooldown_s": COOLDOWN_S,
                        "drain_timeout_s": 10.0}})
    client = openai.AsyncOpenAI(base_url=f"{fleet.api}/v1", api_key="unused", max_retries=0,
                                timeout=COLD_START_S + 120)
    try:
        models: list[str] = []

        async def listed() -> bool:
            # The API's registry view re-reads Redis just after the 201, not before it.
            models[:] = [m.id async for m in client.models.list()]
            return ALIAS in models

        await wait_until(listed, 30, f"{ALIAS} in the gateway's /v1/models")
        assert await fleet.states(ALIAS) == {}, "min_replicas 0: nothing runs before a request"

        # Scale from zero: the gateway holds the first request through a real cold start.
        started = time.monotonic()
        text, tokens, _ = await seen.unless_failed(_chat(client, "hello from a cold start"))
        waited = time.monotonic() - started
        inst = await seen.instance()
        cold = (inst["ready_at"] or float("nan")) - inst["started_at"]
        seen.note(f"first request (held through the cold start) answered after {waited:.1f}s; "
                  f"engine cold start (spawn → /health 200) {cold:.1f}s; text {text!r}")
        assert tokens == MAX_TOKENS and text, f"{text!r} {tokens}\n{await seen.report()}"
        assert inst["backend"] == "vllm-process" and inst["state"] == "running", inst
        assert [a[0] for a in await seen.actions()][:1] == ["start"], await seen.report()

        # The SDK through the gateway on a warm engine.
        text, tokens, ttft = await _chat(client, "hello again")
        seen.note(f"streamed chat: first content after {ttft * 1000:.0f} ms, "
                  f"{tokens} tokens, {text!r}")
        assert tokens == MAX_TOKENS and text, f"{text!r} {tokens}\n{await seen.report()}"
        started = time.monotonic()
        completion = await client.completions.create(
            model=ALIAS, prompt="The quick brown fox", max_tokens=MAX_TOKENS,
            extra_body={"ignore_eos": True})
        seen.note(f"completion in {(time.monotonic() - started) * 1000:.0f} ms: "
                  f"{completion.choices[0].text!r} usage {completion.usage}")
        assert completion.choices[0].finish_reason == "length", completion
        assert completion.usage is not None and completion.usage.completion_tokens == MAX_TOKENS

        # Idle: the autoscaler drains the instance and puts it to sleep at level 1.
        idle_from = time.monotonic()
        try:
            await fleet.wait_states(ALIAS, lambda s: list(s.values()) == ["SLEEP_1"],
                                    COOLDOWN_S + 120, "the idle instance asleep at level 1")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{await seen.report()}") from None
        seen.note(f"SLEEP_1 in /admin/status {time.monotonic() - idle_from:.1f}s after the "
                  f"last request (cooldown {COOLDOWN_S:g}s since the start, then 3 s low)")
        inst = await seen.instance()
        asleep = (await fleet.http.get(f"{inst['url']}/is_sleeping")).json()
        status = (await fleet.http.get(f"{worker.url}/instances/{inst['alias']}/status")).json()
        seen.note(f"engine GET /is_sleeping → {asleep}; worker status sleep_level_value "
                  f"{status['sleep_level_value']}, engine running {status['running']}")
        assert asleep == {"is_sleeping": True}, f"{asleep}\n{await seen.report()}"
        assert status["sleep_level_value"] == 1, f"{status}\n{await seen.report()}"
        assert ("sleep", 1, True) in await seen.actions(), await seen.report()

        # A request for the sleeping alias: held, the autoscaler wakes the engine, served.
        started, wall = time.monotonic(), time.time()
        async with httpx.AsyncClient(timeout=COLD_START_S) as http:
            r = await http.post(f"{fleet.api}/v1/chat/completions", json={
                "model": ALIAS, "messages": [{"role": "user", "content": "wake up"}],
                "max_tokens": MAX_TOKENS, "ignore_eos": True})
        seen.note(f"request to the sleeping alias: {r.status_code} after "
                  f"{time.monotonic() - started:.2f}s (wake + serve); the wake action "
                  f"ended {await seen.action_at('wake', wall):.2f}s after it was sent")
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{await seen.report()}"
        content = r.json()["choices"][0]["message"]["content"]
        assert content, f"{r.text}\n{await seen.report()}"
        kinds = [a[0] for a in await seen.actions()]
        assert kinds[-1:] == ["wake"] and "start" not in kinds[1:], await seen.report()

        async def awake() -> bool:
            body = (await fleet.http.get(f"{inst['url']}/is_sleeping")).json()
            return body == {"is_sleeping": False} and list(
                (await fleet.states(ALIAS)).values()) == ["ACTIVE"]

        try:
            await wait_until(awake, 30, "the engine awake and ACTIVE again")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{await seen.report()}") from None
        seen.note(f"awake again; actions {await seen.actions()}")
    finally:
        await client.close()
