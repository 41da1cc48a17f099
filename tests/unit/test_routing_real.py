"""The real-time routing benchmark's pieces: the fleet's CLI, prompts, timing, the select path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

from bench.routing.fleet import fleet
from bench.routing.harness import Outcome, RunResult
from bench.routing.realclient import chat_body, has_content, prompt_text, stream_chat
from bench.routing.realreport import RouterRuns, ratios
from bench.routing.realrouters import SelectPath
from bench.routing.realrun import RealRun
from bench.routing.realstack import MODEL, check_argv, enginesim_argv, read_metrics
from bench.routing.report import Figures
from services.enginesim import openai_shapes as shapes
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import start_engine
from services.enginesim.tokenizer import encode_chat
from services.enginesim.virtual import TraceRequest
from shared.http_server import serve_app

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def test_the_engine_sim_cli_expresses_the_benchmark_fleet() -> None:
    engines = fleet()
    together = enginesim_argv(engines, [9001, 9002, 9003, 9004])
    assert check_argv(engines, together) == [], together
    for index, cfg in enumerate(engines):  # one process per engine: same configs
        alone = enginesim_argv([cfg], [9001 + index])
        assert check_argv([cfg], alone) == [], alone


def test_check_argv_names_a_value_the_cli_did_not_get() -> None:
    engines = fleet()
    argv = enginesim_argv(engines, [9001, 9002, 9003, 9004])
    argv[argv.index("--max-num-seqs") + 1] = "8"
    problems = check_argv(engines, argv)
    assert len(problems) == 4 and all("max_num_seqs" in p for p in problems), problems


def test_prompts_have_the_trace_token_count() -> None:
    for tokens in (5, 6, 37, 600, 6000):
        text = prompt_text(123, tokens)
        counted = len(encode_chat([{"role": "user", "content": text}]))
        assert counted == tokens, (tokens, counted)
        assert abs(len(text) / 4 - (tokens - 4)) <= 1  # the gateway's chars/4 estimate


def test_only_chunks_with_text_count_as_the_first_token() -> None:
    role = shapes.chat_role_chunk("id", 1, MODEL)
    text = shapes.chat_chunk("id", 1, MODEL, "hello", None)
    empty_final = shapes.chat_chunk("id", 1, MODEL, "", "length")

    def payload(sse: bytes) -> bytes:
        return sse.split(b"data: ", 1)[1].strip()

    assert not has_content(payload(role))
    assert has_content(payload(text))
    assert not has_content(payload(empty_final))
    assert not has_content(b"[DONE]")
    assert not has_content(b"{not json")


async def _engine() -> Any:
    timing = dataclasses.replace(EngineConfig().timing, step_base_ms=2.0, jitter=0.0)
    return await start_engine(EngineConfig(served_model_name=(MODEL,), max_num_seqs=4,
                                           enable_prefix_caching=False, timing=timing))


async def test_a_streamed_request_is_timed_to_its_first_token_and_done() -> None:
    engine = await _engine()
    item = TraceRequest(arrival_s=0.0, input_tokens=50, output_tokens=12)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(engine.url + "/metrics") as resp:
                before = read_metrics(await resp.text())
            sent = await stream_chat(session, engine.url + "/v1/chat/completions",
                                     chat_body(MODEL, 0, item), timeout_s=30)
            async with session.get(engine.url + "/metrics") as resp:
                after = read_metrics(await resp.text())
    finally:
        await engine.stop()
    assert sent.ok, sent
    assert sent.headers_s <= sent.ttft <= sent.e2e < math.inf, sent
    assert after.success - before.success == 1, (before, after)
    assert after.running == after.waiting == 0, after


async def test_a_refusal_is_not_an_error() -> None:
    async def busy(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": "busy"}'})

    item = TraceRequest(arrival_s=0.0, input_tokens=10, output_tokens=3)
    async with serve_app(busy) as server, aiohttp.ClientSession() as session:
        sent = await stream_chat(session, server.url + "/v1/chat/completions",
                                 chat_body(MODEL, 0, item), timeout_s=10)
    assert sent.refused and not sent.ok, sent
    assert "503" in (sent.error or ""), sent


class FakeApi:
    """Answers select with ``answer`` and records outcome reports (as the API does)."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.selects: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.reported = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/scheduler/select":
            self.selects.append(json.loads(body))
            status, reply = 200, self.answer.encode()
        else:
            self.outcomes.append(json.loads(body))
            self.reported.set()
            status, reply = 202, b""
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": reply})


async def test_the_select_path_goes_where_select_says_and_reports_at_the_headers() -> None:
    engine = await _engine()
    key = engine.url.removeprefix("http://")
    keys = ["127.0.0.1:1", key]  # the first member is not even listening
    api = FakeApi(key)
    item = TraceRequest(arrival_s=0.0, input_tokens=40, output_tokens=8)
    try:
        async with serve_app(api) as server, aiohttp.ClientSession() as session:
            path = SelectPath("greybox-select", [server.url], "p", keys,
                              ["http://127.0.0.1:1", engine.url], MODEL, report="headers")
            routed = await path.send(session, 0, item, chat_body(MODEL, 0, item), 30)
            await asyncio.wait_for(api.reported.wait(), 10)
    finally:
        await engine.stop()
    assert routed.sent.ok and routed.engine == 1 and routed.answer == key, routed
    assert api.selects == [{"pool_name": "p", "partition": "Common", "members": keys}]
    [report] = api.outcomes
    assert report["member"] == key and report["status"] == 200, report
    assert 0 <= report["ttft_ms"] <= routed.sent.ttft * 1000, (report, routed)
    assert routed.select_s > 0 and routed.sent.ttft >= routed.select_s, routed


async def test_busy_is_a_503_miss_and_none_falls_back_to_round_robin() -> None:
    engine = await _engine()
    key = engine.url.removeprefix("http://")
    item = TraceRequest(arrival_s=0.0, input_tokens=20, output_tokens=4)
    try:
        for answer, refused in (("busy", True), ("none", False)):
            api = FakeApi(answer)
            async with serve_app(api) as server, aiohttp.ClientSession() as session:
                path = SelectPath("s", [server.url], "p", [key, key], [engine.url, engine.url],
                                  MODEL, report="headers")
                routed = await path.send(session, 0, item, chat_body(MODEL, 0, item), 30)
            assert routed.sent.refused is refused, (answer, routed)
            assert routed.sent.ok is not refused, (answer, routed)
            assert path.answers == {answer: 1}, path.answers
            if refused:
                assert api.outcomes == [], api.outcomes  # nothing was sent anywhere
    finally:
        await engine.stop()


def _runs(name: str, p99: float, goodput: float) -> RouterRuns:
    fig = Figures(router=name, requests=100, ttft_p50=0.1, ttft_p90=0.2, ttft_p99=p99,
                  e2e_p99=p99 * 2, goodput=goodput, refused=0, share=(0.25,) * 4,
                  mean_held_s=0.0)
    run = RealRun(RunResult(name, [Outcome(0, 0.0)], [], 1.0, 1.0), [], [0.0], [0.0], [])
    return RouterRuns(name, [fig], [run])


def test_the_bar_compares_greybox_with_the_best_baseline_and_round_robin() -> None:
    rows = [_runs("round-robin", 8.0, 0.4), _runs("least-in-flight", 2.0, 0.7),
            _runs("power-of-two", 3.0, 0.6), _runs("vr-power_of_two", 1.5, 0.75),
            _runs("vr-round_robin", 9.0, 0.3), _runs("greybox-gw", 1.0, 0.8),
            _runs("s1-select", 4.0, 0.5)]
    [entry] = ratios(rows)
    assert entry["router"] == "greybox-gw"
    assert entry["best"] == "vr-power_of_two" and entry["vllm_router_best"] == "vr-power_of_two"
    assert math.isclose(entry["p99_vs_best"], 1.0 / 1.5), entry
    assert math.isclose(entry["p99_vs_round_robin"], 1.0 / 8.0), entry
    assert math.isclose(entry["goodput_pts_vs_best"], 5.0), entry
    assert math.isclose(entry["goodput_pts_vs_round_robin"], 40.0), entry
