"""Sleep/wake (vLLM), memory release/resume (SGLang) and the simulator's /_sim control routes."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.requests import Request
from starlette.responses import Response

from services.enginesim.faults import FaultError, apply_patch
from services.enginesim.generation import json_response
from services.enginesim.instance import EngineInstance
from services.enginesim.model import SLEEP_MODES, SleepMode
from services.enginesim.openai_shapes import error_body

log = logging.getLogger("llmsched.enginesim")


def _query_error(details: list[str], loc: str) -> Response:
    count = len(details)
    head = f"{count} validation error{'s' if count > 1 else ''}:\n  "
    message = head + "\n  ".join("{" + d + "}" for d in details)
    return json_response(error_body(message, "Bad Request", loc, 400), 400)


def _level_error(raw: str) -> str | None:
    try:
        level = int(raw)
    except ValueError:
        return ("'type': 'int_parsing', 'loc': 'query.level', 'msg': 'Input should be a valid "
                f"integer, unable to parse string as an integer', 'input': {raw!r}")
    if level > 2:
        return ("'type': 'less_than_equal', 'loc': 'query.level', 'msg': 'Input should be less "
                f"than or equal to 2', 'input': {raw!r}, 'ctx': {{'le': 2}}")
    if level < 0:
        return ("'type': 'greater_than_equal', 'loc': 'query.level', 'msg': 'Input should be "
                f"greater than or equal to 0', 'input': {raw!r}, 'ctx': {{'ge': 0}}")
    return None


def _mode_error(raw: str) -> str | None:
    if raw in SLEEP_MODES:
        return None
    return ("'type': 'literal_error', 'loc': 'query.mode', 'msg': \"Input should be 'abort', "
            f"'wait' or 'keep'\", 'input': {raw!r}, 'ctx': {{'expected': \"'abort', 'wait' or "
            "'keep'\"}")


def parse_sleep_query(request: Request) -> tuple[int, SleepMode] | Response:
    """``level`` (0-2, default 1) and ``mode`` (abort|wait|keep, default abort), or vLLM's 400."""
    raw_level = request.query_params.get("level")
    raw_mode = request.query_params.get("mode")
    errors: list[tuple[str, str]] = []
    if raw_level is not None and (err := _level_error(raw_level)) is not None:
        errors.append(("query.level", err))
    if raw_mode is not None and (err := _mode_error(raw_mode)) is not None:
        errors.append(("query.mode", err))
    if errors:
        return _query_error([d for _, d in errors], errors[0][0])
    mode: SleepMode = "abort"
    for known in SLEEP_MODES:
        if known == raw_mode:
            mode = known
    return (1 if raw_level is None else int(raw_level)), mode


async def _do_sleep(inst: EngineInstance, level: int, mode: SleepMode) -> None:
    start = time.perf_counter()
    inst.sleep_ops.in_flight["sleep"] = inst.sleep_ops.in_flight.get("sleep", 0) + 1
    try:
        if inst.config.sleep_ms:
            await asyncio.sleep(inst.config.sleep_ms / 1000)
        aborted = inst.model.sleep(level, mode, inst.runner.clock.now())
        inst.runner.notify_all(aborted)
        if mode == "wait":
            await inst.runner.drained()
            inst.model.finish_sleep(level)
        inst.runner.kick()
    finally:
        inst.sleep_ops.in_flight["sleep"] -= 1
    inst.sleep_ops.record("sleep", time.perf_counter() - start)
    log.info("Engine asleep at level %d (mode %s, %d request(s) aborted)", level, mode,
             len(aborted))


async def _do_wake(inst: EngineInstance, tags: list[str] | None) -> bool:
    start = time.perf_counter()
    inst.sleep_ops.in_flight["wake"] = inst.sleep_ops.in_flight.get("wake", 0) + 1
    try:
        if inst.config.wake_ms and inst.model.is_sleeping:
            await asyncio.sleep(inst.config.wake_ms / 1000)
        awake = inst.model.wake(tags)
        inst.runner.kick()
    finally:
        inst.sleep_ops.in_flight["wake"] -= 1
    inst.sleep_ops.record("wake", time.perf_counter() - start)
    log.info("Engine %s after wake-up (tags %s)", "awake" if awake else "still sleeping", tags)
    return awake


async def sleep(inst: EngineInstance, request: Request) -> Response:
    """POST /sleep?level=0|1|2&mode=abort|wait|keep."""
    parsed = parse_sleep_query(request)
    if isinstance(parsed, Response):
        return parsed
    level, mode = parsed
    await _do_sleep(inst, level, mode)
    return json_response({"status": "sleeping", "level": level})


async def wake_up(inst: EngineInstance, request: Request) -> Response:
    """POST /wake_up[?tags=weights&tags=kv_cache]: ``sleeping`` after a partial wake."""
    tags = request.query_params.getlist("tags") or None
    awake = await _do_wake(inst, tags)
    return json_response({"status": "awake" if awake else "sleeping", "tags": tags})


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
    await _do_sleep(inst, 1, "keep")
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
