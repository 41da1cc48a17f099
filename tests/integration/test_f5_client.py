"""F5Client and the membership sources against the F5 emulator on a loopback socket."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.collector.f5_client import (
    F5AuthError,
    F5Client,
    F5PoolNotFound,
    F5TransientError,
    tilde_path,
)
from services.collector.membership import F5Source, StaticSource
from services.doubles.f5_emulator import F5Emulator, parse_pool_arg
from shared.config import F5Config, PoolConfig
from shared.http_server import RunningServer, free_port, serve_app

PASSWORD = "Zq9-s3cr3t-F5pw"
ENV = "LLMSCHED_TEST_F5_PASSWORD"
POOL = PoolConfig(name="llm-pool", engine_type="vllm")
MEMBERSHIP_LOG = "llmsched.collector.membership"


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class F5:
    """A running emulator and a way to make clients for it."""

    def __init__(self, emulator: F5Emulator, server: RunningServer, http: httpx.AsyncClient):
        self.emu = emulator
        self.server = server
        self.http = http

    def config(self, **overrides: Any) -> F5Config:
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": self.server.port, "scheme": "http",
                                  "password_env": ENV, "timeout": 10.0}
        fields.update(overrides)
        return F5Config(**fields)

    def client(self, clock: Callable[[], float] = time.monotonic, **overrides: Any) -> F5Client:
        return F5Client(self.config(**overrides), self.http, clock=clock)


@pytest.fixture
def emu_clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
async def f5(monkeypatch: pytest.MonkeyPatch, emu_clock: FakeClock) -> AsyncIterator[F5]:
    monkeypatch.setenv(ENV, PASSWORD)
    emulator = F5Emulator(users={"admin": PASSWORD}, clock=emu_clock)
    emulator.set_pool("llm-pool", ["127.0.0.1:9001", "127.0.0.1:9002"])
    async with (
        serve_app(emulator, timeout_graceful_shutdown=1) as server,
        httpx.AsyncClient() as http,
    ):
        try:
            yield F5(emulator, server, http)
        finally:
            emulator.clear_faults()  # releases requests held by a `hang`


# -- client: authentication -------------------------------------------------------------------

async def test_one_login_serves_many_calls(f5: F5) -> None:
    client = f5.client()
    for _ in range(5):
        members = await client.get_members("llm-pool", "Common")
    assert await client.list_pools("Common") == ["llm-pool"]
    assert [(m.key, m.host, m.port, m.available) for m in members] == [
        ("127.0.0.1:9001", "127.0.0.1", 9001, True), ("127.0.0.1:9002", "127.0.0.1", 9002, True)]
    c = f5.emu.counters
    assert (c.login_attempts, c.logins, c.requests, c.unauthorized, c.basic_auth) == (1, 1, 7, 0, 0)
    assert client.auth_mode == "token"


async def test_concurrent_calls_share_one_login(f5: F5) -> None:
    client = f5.client()
    results = await asyncio.gather(*(client.get_members("llm-pool") for _ in range(10)))
    assert all(len(r) == 2 for r in results)
    assert f5.emu.counters.logins == 1


@pytest.mark.parametrize("how", ["clock", "revoked"])
async def test_expired_token_gets_one_new_login_and_the_call_succeeds(
    f5: F5, emu_clock: FakeClock, how: str
) -> None:
    client = f5.client()  # real monotonic clock: it still believes the token is good
    await client.get_members("llm-pool")
    if how == "clock":
        emu_clock.advance(1201)
    else:
        f5.emu.expire_tokens()
    members = await client.get_members("llm-pool")
    assert len(members) == 2
    c = f5.emu.counters
    assert (c.logins, c.unauthorized) == (2, 1)
    await client.get_members("llm-pool")
    assert (c.logins, c.unauthorized) == (2, 1)


async def test_token_renewed_shortly_before_its_timeout(f5: F5) -> None:
    clock = FakeClock(0.0)
    client = f5.client(clock=clock)
    await client.get_members("llm-pool")
    clock.advance(1100)  # timeout 1200, renewed 60 s early
    await client.get_members("llm-pool")
    assert f5.emu.counters.logins == 1
    clock.advance(50)
    await client.get_members("llm-pool")
    c = f5.emu.counters
    assert (c.logins, c.unauthorized) == (2, 0)


@pytest.mark.parametrize("refused_with", [401, 404])
async def test_falls_back_to_basic_auth_when_token_login_is_refused(
    f5: F5, refused_with: int
) -> None:
    f5.emu.token_login_status = refused_with
    client = f5.client()
    for _ in range(3):
        assert len(await client.get_members("llm-pool")) == 2
    c = f5.emu.counters
    assert (c.login_attempts, c.logins, c.basic_auth) == (1, 0, 3)
    assert client.auth_mode == "basic"


async def test_basic_auth_when_configured_never_logs_in(f5: F5) -> None:
    client = f5.client(auth="basic")
    await client.get_members("llm-pool")
    assert await client.list_pools() == ["llm-pool"]
    c = f5.emu.counters
    assert (c.login_attempts, c.basic_auth) == (0, 2)


async def test_bad_password_is_an_auth_error_without_the_password(
    f5: F5, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    f5.emu.users["admin"] = "another-password"
    client = f5.client()
    with pytest.raises(F5AuthError) as info:
        await client.get_members("llm-pool")
    assert "'admin'" in str(info.value)
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)
    assert PASSWORD not in caplog.text
    # token login refused → basic tried → refused; the next call tries token login again
    c = f5.emu.counters
    assert (c.login_attempts, c.basic_auth, c.unauthorized) == (1, 0, 2)
    assert client.auth_mode == "token"
    f5.emu.users["admin"] = PASSWORD
    assert len(await client.get_members("llm-pool")) == 2
    assert client.auth_mode == "token"


async def test_login_while_restjavad_restarts_is_transient(f5: F5) -> None:
    f5.emu.inject_fault("not_registered", 1)
    client = f5.client()
    with pytest.raises(F5TransientError, match="not registered"):
        await client.get_members("llm-pool")
    assert client.auth_mode == "token"
    assert len(await client.get_members("llm-pool")) == 2
    assert f5.emu.counters.logins == 1


async def test_connection_refused_is_transient(f5: F5) -> None:
    client = f5.client(port=free_port())
    with pytest.raises(F5TransientError, match="ConnectError"):
        await client.get_members("llm-pool")


# -- client: paths and pools ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("partition", "name", "path"),
    [
        ("Common", "pool1", "~Common~pool1"),
        ("Tenant_B.x-1", "llm.pool-1_x", "~Tenant_B.x-1~llm.pool-1_x"),
        ("Common", "folder/pool", "~Common~folder~pool"),
        ("/Common/", "a b", "~Common~a%20b"),
        ("Common", "we~ird", "~Common~we%7Eird"),
    ],
)
def test_tilde_path(partition: str, name: str, path: str) -> None:
    assert tilde_path(partition, name) == path


async def test_partitions_and_dotted_names(f5: F5) -> None:
    f5.emu.set_pool("llm.pool-1_x", ["10.9.0.1:8000"], partition="Tenant_B.x-1")
    f5.emu.set_pool("llm.pool-1_x", ["10.9.0.2:8000"], partition="Common")
    f5.emu.set_pool("folder/deep", ["10.9.0.3:8000"], partition="Common")
    client = f5.client()
    tenant = await client.get_members("llm.pool-1_x", "Tenant_B.x-1")
    common = await client.get_members("llm.pool-1_x", "Common")
    deep = await client.get_members("folder/deep", "Common")
    assert [m.key for m in tenant + common + deep] == [
        "10.9.0.1:8000", "10.9.0.2:8000", "10.9.0.3:8000"]
    assert await client.list_pools("Tenant_B.x-1") == ["llm.pool-1_x"]
    assert sorted(await client.list_pools("Common")) == ["folder/deep", "llm-pool", "llm.pool-1_x"]
    log = list(f5.emu.request_log)
    assert "/mgmt/tm/ltm/pool/~Tenant_B.x-1~llm.pool-1_x/members" in log
    assert "/mgmt/tm/ltm/pool/~Common~folder~deep/members" in log
    assert "/mgmt/tm/ltm/pool?$filter=partition+eq+Tenant_B.x-1" in log


async def test_missing_pool_raises_pool_not_found(f5: F5) -> None:
    client = f5.client()
    with pytest.raises(F5PoolNotFound, match=r"/Common/ghost.*01020036:3"):
        await client.get_members("ghost", "Common")


async def test_members_with_f5_field_values(f5: F5) -> None:
    f5.emu.set_pool("mixed", [
        "[fd00::5]:8000", "10.1.1.5%2:8001", "gpu-node-a:8002@10.0.0.31",
        {"name": "fqdn.example:8003", "address": "any6", "state": "fqdn-up",
         "fqdn": "fqdn.example", "autopopulate": True},
        {"name": "_auto_10.0.0.40:8003", "address": "10.0.0.40", "ephemeral": True,
         "fqdn": "fqdn.example", "state": "checking"},
    ])
    f5.emu.set_member("mixed", "10.1.1.5%2:8001", session="user-disabled")
    members = await f5.client().get_members("mixed")
    assert [(m.name, m.key, m.host, m.available) for m in members] == [
        ("fd00::5.8000", "[fd00::5]:8000", "fd00::5", True),
        ("10.1.1.5%2:8001", "10.1.1.5:8001", "10.1.1.5", False),
        ("gpu-node-a:8002", "10.0.0.31:8002", "10.0.0.31", True),
        ("_auto_10.0.0.40:8003", "10.0.0.40:8003", "10.0.0.40", False),
    ]


async def test_close_deletes_the_token(f5: F5) -> None:
    client = f5.client()
    await client.get_members("llm-pool")
    assert f5.emu.active_tokens == 1
    await client.close()
    await client.close()
    assert (f5.emu.active_tokens, f5.emu.counters.token_deletes) == (0, 1)


async def test_close_ignores_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSWORD)
    emulator = F5Emulator(users={"admin": PASSWORD})
    emulator.set_pool("p", ["127.0.0.1:1"])
    async with httpx.AsyncClient() as http:
        async with serve_app(emulator) as server:
            config = F5Config(host="127.0.0.1", port=server.port, scheme="http",
                              password_env=ENV, timeout=10)
            client = F5Client(config, http)
            assert [m.key for m in await client.get_members("p")] == ["127.0.0.1:1"]
        started = time.monotonic()
        await client.close()  # the server is gone: no exception, and no hang
        assert time.monotonic() - started < config.timeout / 2


# -- emulator: real response shapes and control API ------------------------------------------

async def test_emulator_error_bodies(f5: F5, emu_clock: FakeClock) -> None:
    url = f5.server.url
    r = await f5.http.get(f"{url}/mgmt/tm/ltm/pool")
    body = r.json()
    assert r.status_code == 401 and body["kind"] == ":resterrorresponse"
    assert body["message"].startswith("Authorization failed: no user authentication header")
    r = await f5.http.post(f"{url}/mgmt/shared/authn/login",
                           json={"username": "admin", "password": PASSWORD,
                                 "loginProviderName": "tmos"})
    token = r.json()["token"]
    assert (token["timeout"], token["kind"]) == (1200, "shared:authz:tokens:authtokenitemstate")
    emu_clock.advance(1200)
    r = await f5.http.get(f"{url}/mgmt/tm/ltm/pool", headers={"X-F5-Auth-Token": token["token"]})
    assert r.status_code == 401
    assert set(r.json()) == {"code", "message", "referer", "restOperationId", "kind"}
    assert r.json()["message"] == "X-F5-Auth-Token has expired."
    f5.emu.inject_fault("restarting", 1)
    r = await f5.http.get(f"{url}/mgmt/tm/ltm/pool")
    assert r.status_code == 503 and "Configuration Utility restarting..." in r.text
    f5.emu.inject_fault("mcpd_lost", 1)
    r = await f5.http.get(f"{url}/mgmt/tm/ltm/pool")
    assert r.json() == {"code": 500, "message": "The connection to mcpd has been lost, try again.",
                        "errorStack": [], "apiError": 32768001}
    f5.emu.inject_fault("not_registered", 1)
    r = await f5.http.get(f"{url}/mgmt/tm/ltm/pool/~Common~my-pool/members")
    assert r.status_code == 404
    assert r.json()["message"].startswith("URI path /mgmt/tm/ltm/pool/?Common?my-pool/members"
                                          " not registered.  Please verify")


async def test_control_api_faults_count_down(f5: F5) -> None:
    client = f5.client()
    await client.get_members("llm-pool")
    r = await f5.http.post(f"{f5.server.url}/_emulator/faults",
                           json={"kind": "mcpd_lost", "count": 2, "path_prefix": "/mgmt/tm/"})
    assert r.status_code == 200
    for _ in range(2):
        with pytest.raises(F5TransientError, match="500 The connection to mcpd has been lost"):
            await client.get_members("llm-pool")
    assert len(await client.get_members("llm-pool")) == 2
    r = await f5.http.post(f"{f5.server.url}/_emulator/faults", json={"kind": "nonsense"})
    assert r.status_code == 400


async def test_delay_fault_then_answer(f5: F5) -> None:
    client = f5.client(timeout=10.0)
    await client.get_members("llm-pool")
    f5.emu.inject_fault("delay", 1, delay=0.3)
    started = time.monotonic()
    assert len(await client.get_members("llm-pool")) == 2
    assert 0.3 <= time.monotonic() - started < 10.0  # answered late, not timed out


def test_pool_arg() -> None:
    partition, name, members = parse_pool_arg("Common/demo-pool=127.0.0.1:9001,[fd00::1]:9002")
    assert (partition, name) == ("Common", "demo-pool")
    assert [(m.name, m.address) for m in members] == [
        ("127.0.0.1:9001", "127.0.0.1"), ("fd00::1.9002", "fd00::1")]
    assert parse_pool_arg("p=node-a:80@10.0.0.1")[:2] == ("Common", "p")
    for bad in ("Common/p", "p=node-a:80", "p=10.0.0.1"):
        with pytest.raises(ValueError):
            parse_pool_arg(bad)


async def test_emulator_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    env = {**os.environ, "F5_PASSWORD": PASSWORD}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.doubles.f5_emulator", "--port", str(port),
        "--pool", "Common/demo-pool=127.0.0.1:9001,127.0.0.1:9002",
        "--user", "admin", "--password-env", "F5_PASSWORD",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 60
            while True:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    pytest.fail(f"emulator exited: {err.decode(errors='replace')}")
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/_emulator/state", timeout=0.5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "emulator did not start"
                    await asyncio.sleep(0.05)
            assert list(r.json()["pools"]) == ["Common/demo-pool"]
            monkeypatch.setenv(ENV, PASSWORD)
            config = F5Config(host="127.0.0.1", port=port, scheme="http", password_env=ENV,
                              timeout=10.0)
            client = F5Client(config, http)
            assert [m.key for m in await client.get_members("demo-pool")] == [
                "127.0.0.1:9001", "127.0.0.1:9002"]
            await client.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)


# -- F5Source ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("mcpd_lost", "The connection to mcpd has been lost"),
        ("restarting", "503 BIG-IP® - Configuration Utility restarting..."),
        ("not_registered", "not registered"),
        ("hang", "no answer within 1.5s"),
    ],
)
async def test_transient_failure_keeps_last_good_snapshot_with_backoff(
    f5: F5, kind: str, expected: str
) -> None:
    clock = FakeClock(1_700_000_000.0)
    source = F5Source(f5.client(timeout=1.5), clock)
    good = await source.snapshot(POOL, "vllm")
    assert (good.source, good.error, good.stale_since, len(good.members)) == ("f5", None, None, 2)
    assert good.fetched_at == clock.now
    assert source.next_delay(POOL) is None

    f5.emu.inject_fault(kind, None)
    clock.advance(10)
    first_failure = clock.now
    delays = []
    for _ in range(3):
        snap = await source.snapshot(POOL, "vllm")
        assert snap.members == good.members
        assert snap.fetched_at == good.fetched_at
        assert snap.stale_since == first_failure
        assert snap.error is not None and expected in snap.error
        delays.append(source.next_delay(POOL))
        clock.advance(5)
    assert delays == [1.0, 2.0, 4.0]

    f5.emu.clear_faults()
    f5.emu.add_member("llm-pool", "127.0.0.1:9003")
    fresh = await source.snapshot(POOL, "vllm")
    assert (fresh.error, fresh.stale_since, fresh.fetched_at) == (None, None, clock.now)
    assert len(fresh.members) == 3
    assert source.next_delay(POOL) is None


async def test_backoff_is_capped(f5: F5) -> None:
    source = F5Source(f5.client(), FakeClock(0.0), min_backoff=0.5, max_backoff=3.0)
    await source.snapshot(POOL)
    f5.emu.inject_fault("mcpd_lost", None, path_prefix="/mgmt/tm/")
    delays = []
    for _ in range(5):
        await source.snapshot(POOL)
        delays.append(source.next_delay(POOL))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_failure_before_any_good_snapshot_is_empty_with_error(f5: F5) -> None:
    clock = FakeClock(100.0)
    source = F5Source(f5.client(), clock)
    f5.emu.inject_fault("mcpd_lost", None)
    snap = await source.snapshot(POOL, "vllm")
    assert (snap.members, snap.fetched_at, snap.stale_since) == ([], 100.0, None)
    assert snap.error is not None and "mcpd" in snap.error
    assert source.next_delay(POOL) == 1.0


async def test_pool_not_found_is_empty_with_error_and_warned_once(
    f5: F5, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=MEMBERSHIP_LOG)
    source = F5Source(f5.client(), FakeClock(0.0))
    ghost = PoolConfig(name="ghost", engine_type="sglang")

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING and r.name == MEMBERSHIP_LOG
                   for r in caplog.records)

    for _ in range(3):
        snap = await source.snapshot(ghost)
        assert snap.members == [] and snap.stale_since is None
        assert snap.error is not None and "/Common/ghost" in snap.error
        assert snap.engine_type == "sglang"
        assert source.next_delay(ghost) is None
    assert warnings() == 1

    f5.emu.set_pool("ghost", ["127.0.0.1:9100"])
    snap = await source.snapshot(ghost)
    assert ([m.key for m in snap.members], snap.error) == (["127.0.0.1:9100"], None)

    f5.emu.delete_pool("ghost")  # deleted: the old members must not be served
    snap = await source.snapshot(ghost)
    assert snap.members == [] and snap.error is not None
    assert warnings() == 2
    f5.emu.inject_fault("mcpd_lost", 1, path_prefix="/mgmt/tm/")
    snap = await source.snapshot(ghost)  # a later outage must not resurrect them either
    assert snap.members == [] and snap.error is not None and "mcpd" in snap.error


async def test_pool_not_found_fault_on_existing_pool(f5: F5) -> None:
    source = F5Source(f5.client(), FakeClock(0.0))
    assert len((await source.snapshot(POOL)).members) == 2
    f5.emu.inject_fault("pool_not_found", 1, path_prefix="/mgmt/tm/")
    snap = await source.snapshot(POOL)
    assert snap.members == [] and snap.error is not None and "01020036:3" in snap.error


async def test_member_changes_at_run_time_show_up_and_are_logged_once(
    f5: F5, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=MEMBERSHIP_LOG)
    source = F5Source(f5.client(), FakeClock(0.0))

    def infos() -> int:
        return sum(r.levelno == logging.INFO and r.name == MEMBERSHIP_LOG
                   for r in caplog.records)

    async def view() -> list[tuple[str, bool]]:
        return [(m.key, m.available) for m in (await source.snapshot(POOL)).members]

    assert await view() == [("127.0.0.1:9001", True), ("127.0.0.1:9002", True)]
    assert await view() == [("127.0.0.1:9001", True), ("127.0.0.1:9002", True)]
    assert infos() == 1

    f5.emu.set_member("llm-pool", "127.0.0.1:9002", state="user-down", session="user-disabled")
    f5.emu.add_member("llm-pool", "[fd00::5]:9003")
    assert await view() == [
        ("127.0.0.1:9001", True), ("127.0.0.1:9002", False), ("[fd00::5]:9003", True)]
    assert infos() == 2
    mine = [r for r in caplog.records if r.name == MEMBERSHIP_LOG]
    assert "+[[fd00::5]:9003]" in mine[-1].getMessage()

    control = f"{f5.server.url}/_emulator/pools/Common/llm-pool"
    r = await f5.http.patch(f"{control}/members/127.0.0.1:9002",
                            json={"state": "up", "session": "user-enabled"})
    assert r.status_code == 200 and r.json()["state"] == "up"
    assert (await f5.http.delete(f"{control}/members/fd00::5.9003")).status_code == 200
    assert await view() == [("127.0.0.1:9001", True), ("127.0.0.1:9002", True)]
    r = await f5.http.put(control, json={"members": ["127.0.0.1:9001", "10.1.1.5%2:9004",
                                                     "gpu-node:9005@127.0.0.2"]})
    assert r.status_code == 200
    assert await view() == [
        ("127.0.0.1:9001", True), ("10.1.1.5:9004", True), ("127.0.0.2:9005", True)]
    assert infos() == 4
    r = await f5.http.patch(f"{control}/members/nope:1", json={"state": "up"})
    assert r.status_code == 404


# -- StaticSource -----------------------------------------------------------------------------

async def test_static_source() -> None:
    pool = PoolConfig(name="s", engine_type="vllm", source="static",
                      members=["10.0.0.1:8000", "[fd00::1]:8001", "node-a:8002"])
    source = StaticSource(FakeClock(42.0))
    snap = await source.snapshot(pool)
    assert (snap.pool, snap.partition, snap.engine_type, snap.source, snap.fetched_at) == (
        "s", "Common", "vllm", "static", 42.0)
    assert [(m.key, m.host, m.port, m.available) for m in snap.members] == [
        ("10.0.0.1:8000", "10.0.0.1", 8000, True),
        ("[fd00::1]:8001", "fd00::1", 8001, True),
        ("node-a:8002", "node-a", 8002, True),
    ]
    assert (await source.snapshot(pool, "sglang")).engine_type == "sglang"
    assert source.next_delay(pool) is None
