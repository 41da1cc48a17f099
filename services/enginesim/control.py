"""Sleep/wake (vLLM), memory release/resume (SGLang) and the simulator's /_sim control routes."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.requests import Request
from starlette.responses import Response

from services.enginesim.faults import FaultError, apply_patch
from services.enginesim.generation import json_response
from services.enginesim.instance import EngineInstance
from services.enginesim.openai_shapes import error_body


def _query_error(loc: str, detail: str) -> Response:
    message = "1 validation error:\n  {" + detail + "}"
    return json_response(error_body(message, "Bad Request", loc, 400), 400)


def _parse_level(raw: str | None) -> int | Response:
    if raw is None:
        return 1
    try:
        level = int(raw)
    except ValueError:
        return _query_error("query.level", "'type': 'int_parsing', 'loc': 'query.level', 'msg': "
                            "'Input should be a valid integer, unable to parse string as an "
                            f"integer', 'input': {raw!r}")
    if level > 2:
        return _query_error("query.level", "'type': 'less_than_equal', 'loc': 'query.level', "
                            "'msg': 'Input should be less than or equal to 2', 'input': "
                            f"{raw!r}, 'ctx': {{'le': 2}}")
    if level < 1:
        return _query_error("query.level", "'type': 'greater_than_equal', 'loc': 'query.level', "
                            "'msg': 'Input should be greater than or equal to 1', 'input': "
                            f"{raw!r}, 'ctx': {{'ge': 1}}")
    return level


async def _do_sleep(inst: EngineInstance, level: int) -> None:
    start = time.perf_counter()
    inst.sleep_ops.in_flight["sleep"] = inst.sleep_ops.in_flight.get("sleep", 0) + 1
    try:
        if inst.config.sleep_ms:
            await asyncio.sleep(inst.config.sleep_ms / 1000)
        aborted = inst.model.sleep(level, inst.runner.clock.now())
        inst.runner.notify_all(aborted)
    finally:
        inst.sleep_ops.in_flight["sleep"] -= 1
    inst.sleep_ops.record("sleep", time.perf_counter() - start)


async def _do_wake(inst: EngineInstance, tags: list[str] | None) -> None:
    start = time.perf_counter()
    inst.sleep_ops.in_flight["wake_up"] = inst.sleep_ops.in_flight.get("wake_up", 0) + 1
    try:
        if inst.config.wake_ms and inst.model.is_sleeping:
            await asyncio.sleep(inst.config.wake_ms / 1000)
        inst.model.wake(tags)
        inst.runner.kick()
    finally:
        inst.sleep_ops.in_flight["wake_up"] -= 1
    inst.sleep_ops.record("wake_up", time.perf_counter() - start)


async def sleep(inst: EngineInstance, request: Request) -> Response:
    """POST /sleep?level=1|2."""
    level = _parse_level(request.query_params.get("level"))
    if isinstance(level, Response):
        return level
    await _do_sleep(inst, level)
    return json_response({"status": "sleeping", "level": level})


async def wake_up(inst: EngineInstance, request: Request) -> Response:
    """POST /wake_up[?tags=weights&tags=kv_cache]."""
    tags = request.query_params.getlist("tags") or None
    await _do_wake(inst, tags)
    return json_response({"status": "awake", "tags": tags})


async def is_sleeping(inst: EngineInstance, request: Request) -> Response:
    """GET /is_sleeping."""
    return json_response({"is_sleeping": inst.model.is_sleeping})


async def _body_tags(request: Request) -> list[str] | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    tags = data.get("tags") if isinstance(data, dict) else None
    return [str(t) for t in tags] if isinstance(tags, list) else None


async def release_memory(inst: EngineInstance, request: Request) -> Response:
    """SGLang POST /release_memory_occupation: pause; queued requests wait for resume."""
    await _body_tags(request)
    await _do_sleep(inst, 1)
    return Response(status_code=200)


async def resume_memory(inst: EngineInstance, request: Request) -> Response:
    """SGLang POST /resume_memory_occupation."""
    await _do_wake(inst, await _body_tags(request))
    return Response(status_code=200)


async def get_faults(inst: EngineInstance, request: Request) -> Response:
    """GET /_sim/faults."""
    return json_response(inst.faults.as_dict())


async def post_faults(inst: EngineInstance, request: Request) -> Response:
    """POST /_sim/faults: patch the faults; ``{"crash": "exit"|"close"}`` crashes the instance."""
    try:
        patch = json.loads(await request.body() or b"{}")
        if not isinstance(patch, dict):
            raise FaultError("body must be a JSON object")
        crash = apply_patch(inst.faults, patch)
    except (json.JSONDecodeError, FaultError) as err:
        return json_response({"error": str(err)}, 400)
    if crash is not None:
        # Answer first, then die: the caller learns the crash was accepted.
        asyncio.get_running_loop().call_later(0.05, inst.on_crash, crash)
    return json_response(inst.faults.as_dict())


async def get_state(inst: EngineInstance, request: Request) -> Response:
    """GET /_sim/state."""
    return json_response(inst.state())
