"""MetricsScraper against metrics_server doubles on real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.collector.scraper import (
    NO_ENGINE_METRICS,
    MetricsScraper,
    new_client,
    open_clients,
)
from services.doubles.metrics_server import (
    Engine,
    MetricsDouble,
    Wave,
    serve_doubles,
    start_double,
)
from shared.config import MetricsConfig, PoolConfig
from shared.engines import BUILTIN_ENGINES, EngineMetricsSpec
from shared.http_server import RunningServer, free_port
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

VLLM = BUILTIN_ENGINES["vllm"]
SGLANG = BUILTIN_ENGINES["sglang"]


@pytest.fixture
async def scraper() -> AsyncIterator[MetricsScraper]:
    async with open_clients(4) as clients, MetricsScraper(clients) as scraper:
        yield scraper


def pool(engine: str = "vllm", **metrics: Any) -> PoolConfig:
    return PoolConfig(name="llm-pool-1", engine_type=engine, metrics=MetricsConfig(**metrics))


def member_of(server: RunningServer, key: str | None = None, **fields: Any) -> MemberInfo:
    return MemberInfo(key=key or f"{server.host}:{server.port}", host=server.host,
                      port=server.port, **fields)


async def scrape_one(scraper: MetricsScraper, double: MetricsDouble, *,
                     spec: EngineMetricsSpec = VLLM, engine: str = "vllm",
                     **metrics: Any) -> MemberMetrics:
    async with serve_doubles([double]) as (server,):
        batch = await scraper.scrape_pool(pool(engine, **metrics), spec, [member_of(server)])
    assert len(batch.members) == 1
    return batch.members[0]


async def test_vllm_values_are_read(scraper: MetricsScraper) -> None:
    double = MetricsDouble(engine="vllm", waiting=7, running=3, kv_usage=0.42)
    async with serve_doubles([double]) as (server,):
        before = time.time()
        batch = await scraper.scrape_pool(pool(), VLLM, [member_of(server)])
        after = time.time()
    assert (batch.pool, batch.partition) == ("llm-pool-1", "Common")
    assert before <= batch.round_started_at <= after
    (result,) = batch.members
    assert result.ok and result.error is None
    assert result.key == f"127.0.0.1:{server.port}"
    assert (result.waiting_queue, result.running_req, result.cache_usage) == (7.0, 3.0, 0.42)
    assert {"ttft_sum", "ttft_count", "e2e_count", "prefix_cache_hits"} <= set(result.extra)
    assert before <= result.scraped_at <= after
    assert double.scrapes == 1


async def test_sglang_values_are_read(scraper: MetricsScraper) -> None:
    double = MetricsDouble(engine="sglang", waiting=2, running=5, kv_usage=0.8)
    result = await scrape_one(scraper, double, spec=SGLANG, engine="sglang")
    assert result.ok
    assert (result.waiting_queue, result.running_req, result.cache_usage) == (2.0, 5.0, 0.8)
    assert "cache_hit_rate" in result.extra


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
async def test_several_series_are_summed_and_maxed(scraper: MetricsScraper,
                                                  engine: Engine) -> None:
    spec = BUILTIN_ENGINES[engine]
    double = MetricsDouble(engine=engine, series=3, waiting=10, running=4, kv_usage=0.9)
    result = await scrape_one(scraper, double, spec=spec, engine=engine)
    assert result.ok
    assert (result.waiting_queue, result.running_req) == (10.0, 4.0)
    assert result.cache_usage == pytest.approx(0.9)  # the fullest of 0.9, 0.6, 0.3


async def test_several_series_mean_when_configured(scraper: MetricsScraper) -> None:
    spec = EngineMetricsSpec(waiting_queue=VLLM.waiting_queue, running_req=VLLM.running_req,
                             cache_usage=VLLM.cache_usage, cache_usage_aggregate="mean")
    double = MetricsDouble(series=3, kv_usage=0.9)
    result = await scrape_one(scraper, double, spec=spec)
    assert result.cache_usage == pytest.approx((0.9 + 0.6 + 0.3) / 3)


@pytest.mark.parametrize("kv_name", ["new", "old", "both"])
async def test_old_and_new_kv_names(scraper: MetricsScraper, kv_name: str) -> None:
    double = MetricsDouble(kv_name=kv_name, kv_usage=0.37)
    assert ("vllm:gpu_cache_usage_perc" in double.render()) == (kv_name != "new")
    result = await scrape_one(scraper, double)
    assert result.ok and result.cache_usage == 0.37


FAILURES: list[tuple[str, dict[str, Any], Callable[[str], bool]]] = [
    ("missing engine metrics", {"missing": True}, lambda e: e == NO_ENGINE_METRICS),
    ("malformed", {"malformed": True},
     lambda e: e.startswith("parse error: line ") and "vllm:num_requests_waiting" in e),
    ("HTTP 500", {"status": 500}, lambda e: e == "HTTP 500"),
    ("HTTP 503", {"status": 503}, lambda e: e == "HTTP 503"),
]


@pytest.mark.parametrize(("knobs", "check"), [case[1:] for case in FAILURES],
                         ids=[case[0] for case in FAILURES])
async def test_failures_are_published(scraper: MetricsScraper, knobs: dict[str, Any],
                                      check: Callable[[str], bool]) -> None:
    result = await scrape_one(scraper, MetricsDouble(waiting=3, **knobs))
    assert not result.ok
    assert result.error is not None and check(result.error), result.error
    assert result.waiting_queue is None and result.cache_usage is None


async def test_wrong_path_is_http_404(scraper: MetricsScraper) -> None:
    result = await scrape_one(scraper, MetricsDouble(), path="/nope")
    assert (result.ok, result.error) == (False, "HTTP 404")


async def test_slow_member_times_out_within_the_pool_timeout(scraper: MetricsScraper) -> None:
    slow, fast = MetricsDouble(delay_s=60, waiting=1), MetricsDouble(waiting=2)
    async with serve_doubles([slow, fast]) as servers:
        started = time.monotonic()
        batch = await scraper.scrape_pool(pool(timeout=3), VLLM,
                                          [member_of(server) for server in servers])
        elapsed = time.monotonic() - started
    slow_result, fast_result = batch.members
    assert (slow_result.ok, slow_result.error) == (False, "timeout after 3s"), slow_result
    assert fast_result.ok and fast_result.waiting_queue == 2.0, fast_result
    # The round ends at the pool timeout, long before the slow member would answer.
    assert 3 * 0.9 <= elapsed < 30, elapsed


async def test_refused_connection(scraper: MetricsScraper) -> None:
    port = free_port()
    member = MemberInfo(key=f"127.0.0.1:{port}", host="127.0.0.1", port=port)
    batch = await scraper.scrape_pool(pool(timeout=2), VLLM, [member])
    (result,) = batch.members
    assert not result.ok
    assert result.error is not None and result.error.startswith("connect failed")


async def test_port_and_path_overrides(scraper: MetricsScraper) -> None:
    double = MetricsDouble(metrics_path="/engine/metrics", waiting=6)
    async with serve_doubles([double]) as (server,):
        # the member's own port serves nothing; the pool says where the metrics are
        member = MemberInfo(key="10.0.0.5:8000", host="127.0.0.1", port=free_port())
        batch = await scraper.scrape_pool(
            pool(port=server.port, path="/engine/metrics"), VLLM, [member])
        no_slash = await scraper.scrape_pool(
            pool(port=server.port, path="engine/metrics"), VLLM, [member])
    (result,) = batch.members
    assert result.ok and result.key == "10.0.0.5:8000" and result.waiting_queue == 6.0
    assert no_slash.members[0].ok


async def test_ipv6_member(scraper: MetricsScraper) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.fail("no IPv6 loopback (::1) on this machine; the IPv6 member test needs one")
    double = MetricsDouble(waiting=4)
    server = await start_double(double, host="::1")
    try:
        member = MemberInfo(key=f"[::1]:{server.port}", host="::1", port=server.port)
        batch = await scraper.scrape_pool(pool(), VLLM, [member])
    finally:
        await server.stop()
    assert batch.members[0].ok and batch.members[0].waiting_queue == 4.0


async def test_bearer_token_required_and_sent(scraper: MetricsScraper,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "tok-Zq81-secret"
    monkeypatch.setenv("LLMSCHED_TEST_METRICS_KEY", token)
    double = MetricsDouble(bearer=token, waiting=5)
    async with serve_doubles([double]) as (server,):
        members = [member_of(server)]
        without = await scraper.scrape_pool(pool(), VLLM, members)
        inline = await scraper.scrape_pool(pool(APIkey=token), VLLM, members)
        from_env = await scraper.scrape_pool(pool(apikey_env="LLMSCHED_TEST_METRICS_KEY"),
                                             VLLM, members)
        wrong = await scraper.scrape_pool(pool(APIkey="nope-wrong-token"), VLLM, members)
    assert without.members[0].error == "HTTP 401"
    assert inline.members[0].ok and inline.members[0].waiting_queue == 5.0
    assert from_env.members[0].ok
    assert wrong.members[0].error == "HTTP 401"
    assert token not in caplog.text


async def test_basic_auth_required_and_sent(scraper: MetricsScraper,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LLMSCHED_TEST_METRICS_PWD", "pw-Kx91-secret")
    monkeypatch.setenv("LLMSCHED_TEST_WRONG_PWD", "pw-wrong-9999")
    double = MetricsDouble(basic=("scraper", "pw-Kx91-secret"), running=2)
    async with serve_doubles([double]) as (server,):
        members = [member_of(server)]
        good = await scraper.scrape_pool(
            pool(metric_user="scraper", metric_pwd_env="LLMSCHED_TEST_METRICS_PWD"),
            VLLM, members)
        bad = await scraper.scrape_pool(
            pool(metric_user="scraper", metric_pwd_env="LLMSCHED_TEST_WRONG_PWD"),
            VLLM, members)
    assert good.members[0].ok and good.members[0].running_req == 2.0
    assert bad.members[0].error == "HTTP 401"
    assert "pw-Kx91-secret" not in caplog.text and "pw-wrong-9999" not in caplog.text


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30)
    return cert, key


async def test_https_verify_settings(scraper: MetricsScraper, tls_files: tuple[Path, Path]
                                     ) -> None:
    cert, key = tls_files
    double = MetricsDouble(waiting=8)
    server = await start_double(double, ssl_certfile=str(cert), ssl_keyfile=str(key))
    try:
        members = [member_of(server)]
        system_cas = await scraper.scrape_pool(pool(schema="https", timeout=3), VLLM, members)
        no_verify = await scraper.scrape_pool(pool(schema="https", verify=False), VLLM, members)
        own_ca = await scraper.scrape_pool(pool(schema="https", verify=str(cert)), VLLM,
                                           members)
        plain_http = await scraper.scrape_pool(pool(schema="http", timeout=3), VLLM, members)
    finally:
        await server.stop()
    assert not system_cas.members[0].ok
    assert "CERTIFICATE_VERIFY_FAILED" in (system_cas.members[0].error or "")
    assert no_verify.members[0].ok and no_verify.members[0].waiting_queue == 8.0
    assert own_ca.members[0].ok
    assert not plain_http.members[0].ok


async def test_unusable_ca_bundle_fails_every_member(scraper: MetricsScraper,
                                                     tmp_path: Path) -> None:
    members = [MemberInfo(key=f"10.0.0.{i}:8000", host="127.0.0.1", port=1) for i in (1, 2)]
    batch = await scraper.scrape_pool(pool(schema="https", verify=str(tmp_path / "none.pem")),
                                      VLLM, members)
    assert [m.ok for m in batch.members] == [False, False]
    assert all((m.error or "").startswith("TLS setup failed") for m in batch.members)


async def test_unavailable_members_are_skipped(scraper: MetricsScraper) -> None:
    up, down = MetricsDouble(waiting=1), MetricsDouble(waiting=2)
    async with serve_doubles([up, down]) as (up_server, down_server):
        batch = await scraper.scrape_pool(pool(), VLLM, [
            member_of(up_server), member_of(down_server, available=False, state="user-down")])
    assert [m.key for m in batch.members] == [f"127.0.0.1:{up_server.port}"]
    assert (up.scrapes, down.scrapes) == (1, 0)


async def test_every_member_yields_one_result_in_order(scraper: MetricsScraper) -> None:
    doubles = [MetricsDouble(waiting=1), MetricsDouble(status=500), MetricsDouble(missing=True),
               MetricsDouble(malformed=True), MetricsDouble(waiting=5)]
    async with serve_doubles(doubles) as servers:
        members = [member_of(server) for server in servers]
        batch = await scraper.scrape_pool(pool(), VLLM, members)
    assert [m.key for m in batch.members] == [m.key for m in members]
    assert [m.ok for m in batch.members] == [True, False, False, False, True]


async def test_many_members_are_scraped_concurrently(scraper: MetricsScraper) -> None:
    doubles = [MetricsDouble(delay_s=0.3, waiting=i) for i in range(4)]
    # The second round runs over connections kept alive from the first: the servers keep
    # them longer than a slow first round can take (uvicorn's default, 5 s, races with it).
    servers = [await start_double(double, timeout_keep_alive=120) for double in doubles]
    try:
        members = [MemberInfo(key=f"10.1.{i // 250}.{i % 250}:8000", host="127.0.0.1",
                              port=servers[i % 4].port) for i in range(200)]
        rounds: list[tuple[MetricsBatch, float]] = []
        for _ in range(2):
            started = time.monotonic()
            batch = await scraper.scrape_pool(pool(timeout=15), VLLM, members)
            rounds.append((batch, time.monotonic() - started))
    finally:
        for server in servers:
            await server.stop()
    for index, (batch, elapsed) in enumerate(rounds):
        assert len(batch.members) == 200
        assert all(m.ok for m in batch.members), (
            f"round {index + 1} ({elapsed:.1f}s)", {m.error for m in batch.members})
        assert [m.waiting_queue for m in batch.members[:4]] == [0.0, 1.0, 2.0, 3.0]
        assert elapsed < 20, elapsed  # one at a time would take 60 s
    assert [d.scrapes for d in doubles] == [100, 100, 100, 100]


async def test_each_member_sticks_to_one_client() -> None:
    seen: list[list[str]] = [[], [], []]

    def recorder(index: int) -> Callable[[httpx.Request], Any]:
        async def record(request: httpx.Request) -> None:
            seen[index].append(str(request.url))
        return record

    clients = [httpx.AsyncClient(event_hooks={"request": [recorder(i)]}) for i in range(3)]
    doubles = [MetricsDouble() for _ in range(6)]
    try:
        async with serve_doubles(doubles) as servers, MetricsScraper(clients) as scraper:
            members = [member_of(server) for server in servers]
            await scraper.scrape_pool(pool(), VLLM, members)
            first = [sorted(urls) for urls in seen]
            for urls in seen:
                urls.clear()
            await scraper.scrape_pool(pool(), VLLM, members)
    finally:
        for client in clients:
            await client.aclose()
    assert [sorted(urls) for urls in seen] == first
    assert sum(len(urls) for urls in first) == 6
    assert sum(1 for urls in first if urls) >= 2  # spread over the clients


def test_scraper_needs_a_client() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MetricsScraper([])


async def test_concurrency_is_bounded() -> None:
    double = MetricsDouble(delay_s=0.2)
    async with new_client() as client, MetricsScraper(client, max_concurrency=5) as scraper, \
            serve_doubles([double]) as (server,):
        members = [MemberInfo(key=f"10.2.0.{i}:8000", host="127.0.0.1", port=server.port)
                   for i in range(15)]
        started = time.monotonic()
        batch = await scraper.scrape_pool(pool(timeout=3), VLLM, members)
        elapsed = time.monotonic() - started
    assert all(m.ok for m in batch.members)
    assert elapsed >= 0.55  # three waves of five


async def test_summary_logged_only_when_failing_count_changes(
        scraper: MetricsScraper, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.collector.scraper")
    good, flaky = MetricsDouble(), MetricsDouble(status=500)
    async with serve_doubles([good, flaky]) as servers:
        members = [member_of(server) for server in servers]

        async def round_messages() -> list[str]:
            caplog.clear()
            await scraper.scrape_pool(pool(), VLLM, members)
            return [r.getMessage() for r in caplog.records
                    if r.levelno >= logging.INFO and r.name == "llmsched.collector.scraper"]

        first = await round_messages()
        second = await round_messages()
        flaky.set(status=200)
        healed = await round_messages()
        again = await round_messages()
    assert len(first) == 1
    assert "1 of 2 members failing" in first[0] and "HTTP 500: 1" in first[0]
    assert second == []
    assert len(healed) == 1 and "all 2 members scraped OK" in healed[0]
    assert again == []


async def test_empty_and_all_unavailable_pools(scraper: MetricsScraper) -> None:
    empty = await scraper.scrape_pool(pool(), VLLM, [])
    down = await scraper.scrape_pool(pool(), VLLM, [
        MemberInfo(key="10.0.0.1:8000", host="10.0.0.1", port=8000, available=False)])
    assert isinstance(empty, MetricsBatch) and empty.members == [] and down.members == []


# --- the double's own control surface -------------------------------------------------


async def test_control_api_changes_what_is_scraped(scraper: MetricsScraper) -> None:
    double = MetricsDouble()
    async with serve_doubles([double]) as (server,), httpx.AsyncClient() as http:
        put = await http.put(f"{server.url}/_control", json={"waiting": 9, "kv_usage": 0.5})
        assert put.status_code == 200 and put.json()["waiting"] == 9.0
        first = await scraper.scrape_pool(pool(), VLLM, [member_of(server)])
        bad = await http.put(f"{server.url}/_control", json={"bogus": 1})
        negative = await http.put(f"{server.url}/_control", json={"series": 0})
        await http.put(f"{server.url}/_control", json={"status": 502})
        second = await scraper.scrape_pool(pool(), VLLM, [member_of(server)])
        state = (await http.get(f"{server.url}/_control")).json()
    assert (first.members[0].waiting_queue, first.members[0].cache_usage) == (9.0, 0.5)
    assert bad.status_code == 400 and "bogus" in bad.json()["error"]
    assert negative.status_code == 400 and "series" in negative.json()["error"]
    assert second.members[0].error == "HTTP 502"
    assert state["scrapes"] == 2 and state["status"] == 502


def test_wave_override_and_auto() -> None:
    now = [0.0]
    double = MetricsDouble(wave=Wave(period_s=100, max_waiting=10), clock=lambda: now[0])
    assert double.load()[0] == 5.0  # sin(0): the middle of the wave
    now[0] = 25.0
    assert double.load() == (10.0, 8.0, 0.95)  # the crest
    double.set(waiting=1)
    assert double.load()[0] == 1.0 and double.knobs.auto is False
    double.set(auto=True)
    assert double.load()[0] == 10.0
    with pytest.raises(ValueError, match="kv_name"):
        double.set(kv_name="newest")


def test_demo_waves_differ_in_phase() -> None:
    from services.doubles.metrics_server import demo_doubles

    doubles = demo_doubles(3, period_s=60, clock=lambda: 10.0)
    assert len({double.load() for double in doubles}) == 3


async def test_command_line_serves_and_prints_one_line_per_instance(
        scraper: MetricsScraper) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.doubles.metrics_server", "--ports", "0,0",
        "--engine", "sglang", "--model", "demo", "--wave", "--period", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 10)).decode()
                 for _ in range(2)]
        urls = [line.split()[3] for line in lines]
        ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls]
        members = [MemberInfo(key=f"127.0.0.1:{port}", host="127.0.0.1", port=port)
                   for port in ports]
        batch = await scraper.scrape_pool(pool("sglang"), SGLANG, members)
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert all(line.startswith("sglang metrics on http://127.0.0.1:") for line in lines), lines
    assert all(m.ok for m in batch.members), [m.error for m in batch.members]
    assert process.returncode == 0
    assert stderr == b""
