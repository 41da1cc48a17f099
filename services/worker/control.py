"""HTTP calls to one engine: sleep/wake (vLLM and SGLang flavours), /is_sleeping, /metrics."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from shared.promparse import PromParseError, SampleSelector, Series

TIMEOUT_S = 2.0
SLEEP_TIMEOUT_S = 120.0
SLEEP_STATES = {"awake": 0, "weights_offloaded": 1, "discard_all": 2}

_VLLM = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv": "vllm:kv_cache_usage_perc",
    "kv_old": "vllm:gpu_cache_usage_perc",
    "sleep": "vllm:engine_sleep_state",
    "ttft_sum": "vllm:time_to_first_token_seconds_sum",
    "ttft_count": "vllm:time_to_first_token_seconds_count",
    "e2e_sum": "vllm:e2e_request_latency_seconds_sum",
    "e2e_count": "vllm:e2e_request_latency_seconds_count",
}
_SGLANG = {
    "running": "sglang:num_running_reqs",
    "waiting": "sglang:num_queue_reqs",
    "kv": "sglang:token_usage",
    "ttft_sum": "sglang:time_to_first_token_seconds_sum",
    "ttft_count": "sglang:time_to_first_token_seconds_count",
    "e2e_sum": "sglang:e2e_request_latency_seconds_sum",
    "e2e_count": "sglang:e2e_request_latency_seconds_count",
}


class EngineCallError(Exception):
    """The engine refused or did not answer a control call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class EngineLoad:
    """What an engine's /metrics says right now."""

    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    sleep_level: int | None = None
    """From vllm:engine_sleep_state; None when the engine does not export it."""
    ttft_avg: float | None = None
    """Mean TTFT since the engine started (histogram sum / count)."""
    e2e_avg: float | None = None


def _total(series: Series | None) -> float | None:
    return None if not series else sum(v for _, v in series)


def _mean(total: Series | None, count: Series | None) -> float | None:
    s, n = _total(total), _total(count)
    return s / n if s is not None and n else None


class MetricsParser:
    """Turns one engine flavour's Prometheus text into an EngineLoad."""

    def __init__(self, engine: str) -> None:
        self.names = _SGLANG if engine == "sglang" else _VLLM
        self.selector = SampleSelector(self.names.values())

    def parse(self, text: str) -> EngineLoad:
        """Parse; raises PromParseError on a malformed wanted line."""
        found = self.selector.parse(text)
        n = self.names

        def get(key: str) -> Series | None:
            return found.get(n[key]) if key in n else None

        kv = get("kv") or get("kv_old")
        sleep_level = None
        for labels, value in get("sleep") or []:
            if value >= 1 and labels.get("sleep_state") in SLEEP_STATES:
                sleep_level = SLEEP_STATES[labels["sleep_state"]]
        return EngineLoad(running=_total(get("running")), waiting=_total(get("waiting")),
                          kv_cache_usage=max(v for _, v in kv) if kv else None,
                          sleep_level=sleep_level,
                          ttft_avg=_mean(get("ttft_sum"), get("ttft_count")),
                          e2e_avg=_mean(get("e2e_sum"), get("e2e_count")))


class EngineControl:
    """Control calls to engines over one shared HTTP client."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._parsers = {"vllm": MetricsParser("vllm"), "sglang": MetricsParser("sglang")}

    async def _post(self, url: str, *, params: dict[str, str] | None = None,
                    json: object | None = None, limit_s: float = SLEEP_TIMEOUT_S) -> None:
        try:
            r = await self.http.post(url, params=params, json=json, timeout=limit_s)
        except httpx.HTTPError as err:
            raise EngineCallError(f"{url}: {type(err).__name__} {err}".strip()) from None
        if r.status_code >= 400:
            raise EngineCallError(f"{url} answered {r.status_code}: {r.text[:300]}",
                                  r.status_code)

    async def sleep(self, base: str, engine: str, level: int) -> None:
        """vLLM ``POST /sleep?level=N``; SGLang ``POST /release_memory_occupation``."""
        if engine == "sglang":
            await self._post(base + "/release_memory_occupation", json={})
        else:
            await self._post(base + "/sleep", params={"level": str(level)})

    async def wake(self, base: str, engine: str) -> None:
        """vLLM ``POST /wake_up``; SGLang ``POST /resume_memory_occupation``."""
        if engine == "sglang":
            await self._post(base + "/resume_memory_occupation", json={})
        else:
            await self._post(base + "/wake_up")

    async def is_sleeping(self, base: str, engine: str) -> bool | None:
        """vLLM ``GET /is_sleeping``; None where the engine has no such call (SGLang)."""
        if engine == "sglang":
            return None
        try:
            r = await self.http.get(base + "/is_sleeping", timeout=TIMEOUT_S)
            r.raise_for_status()
            return bool(r.json()["is_sleeping"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            raise EngineCallError(f"{base}/is_sleeping: {type(err).__name__} {err}") from None

    async def metrics(self, base: str, engine: str) -> EngineLoad:
        """Scrape and parse ``GET /metrics``."""
        try:
            r = await self.http.get(base + "/metrics", timeout=TIMEOUT_S)
            r.raise_for_status()
            return self._parsers.get(engine, self._parsers["vllm"]).parse(r.text)
        except (httpx.HTTPError, PromParseError) as err:
            raise EngineCallError(f"{base}/metrics: {type(err).__name__} {err}") from None

    async def set_sim_latency(self, base: str, latency_ms: float) -> None:
        """Simulator only: add ``latency_ms`` to every generation request (fake_delay_ms)."""
        await self._post(base + "/_sim/faults", json={"latency_ms": latency_ms},
                         limit_s=TIMEOUT_S)
