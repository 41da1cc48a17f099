"""The F5 iRule (deploy/f5/llmsched_select.tcl), run by tclsh through deploy/f5/harness.tcl.

The harness stubs the BIG-IP commands and does the sideband calls with real sockets,
so every test here has the iRule really talk HTTP over loopback to a select API.

Most scenarios use ``SelectApiStandIn`` below: a real HTTP server that validates the
request the way ``POST /scheduler/select`` does, records what it got, and answers
whatever a scenario needs (a member, ``none``, ``fallback``, 500, a hang, odd
framings) -- failure modes the real API does not produce on demand. The last section
runs the same iRule against the real API and scheduler (the ``make_stack`` fixture:
real NATS/Redis) for the answers that need real decisions: a member pick, IPv6 and
route-domain keys, ``fallback`` and ``none``, and on a greybox pool ``busy`` and the
outcome reports that end a pick's in-flight count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.members import MemberAddressError, parse_member_key
from shared.messages import SelectRequest
from shared.routing import OutcomeEvent
from tests.integration.conftest import Stack, StackFactory
from tests.integration.system import wait_until

REPO = Path(__file__).resolve().parents[2]
IRULE = REPO / "deploy" / "f5" / "llmsched_select.tcl"
HARNESS = REPO / "deploy" / "f5" / "harness.tcl"
POOL = "/Common/demo-pool"
# The iRule's own defaults (50 ms connect, 200 ms answer) suit a BIG-IP next to the API; a
# test on a busy shared machine gives every run ample time unless it tests a time-out.
CONNECT_TIMEOUT_MS = 5_000
"""Sideband connect time-out passed to the harness, milliseconds."""
TIMEOUT_MS = 10_000
"""Sideband send + answer time-out passed to the harness, milliseconds."""
RUN_TIMEOUT = 60.0
"""Hard bound on one harness run, seconds (a stand-in ``hang`` lasts this long at most)."""
RUN_TIMEOUT_MS = int(RUN_TIMEOUT * 1000)

THREE = [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)]
KEYS = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]


# --------------------------------------------------------------------------- stand-in


@dataclass
class Received:
    """One request the stand-in got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SelectApiStandIn:
    """A loopback HTTP server answering ``POST /scheduler/select`` like the llmsched API.

    Bad bodies get 400 (as the API does); otherwise ``status`` with ``answer`` (a
    string, or a function of the decoded request) as text/plain. ``delay`` waits
    before answering, ``hang`` never answers, ``framing`` is ``length``
    (Content-Length, what uvicorn sends), ``chunked`` or ``close`` (read to EOF),
    ``split`` sends the head and the body in two writes ``split`` seconds apart.
    ``POST /scheduler/outcome`` is recorded and answered 202 (never, with
    ``outcome_hang``).
    """

    answer: str | Callable[[SelectRequest], str] = "none"
    status: int = 200
    delay: float = 0.0
    hang: bool = False
    framing: str = "length"
    split: float = 0.0
    outcome_hang: bool = False
    received: list[Received] = field(default_factory=list)
    _release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> SelectApiStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                stand_in.received.append(Received(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                stand_in.respond(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    def wait_for(self, count: int, what: str, seen: object,
                 timeout_s: float = RUN_TIMEOUT) -> None:
        """Until ``count`` requests arrived (the iRule does not wait for its reports)."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, (
            f"no {what} within {timeout_s}s; got {self.paths()}\n{seen}")

    def respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if handler.path == "/scheduler/outcome":
            self._accept_outcome(handler)
            return
        status, text = self._decide(handler, body)
        if self.hang:
            self._release.wait(RUN_TIMEOUT)
            return
        if self.delay:
            time.sleep(self.delay)
        payload = text.encode()
        head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                "content-type: text/plain; charset=utf-8", "server: stand-in"]
        if self.framing == "chunked":
            head.append("transfer-encoding: chunked")
            half = len(payload) // 2
            payload = b"".join(
                f"{len(part):x}\r\n".encode() + part + b"\r\n"
                for part in (payload[:half], payload[half:]) if part
            ) + b"0\r\n\r\n"
        elif self.framing == "close":
            head.append("connection: close")
        else:
            head.append(f"content-length: {len(payload)}")
        out = handler.wfile
        out.write(("\r\n".join(head) + "\r\n\r\n").encode())
        out.flush()
        if self.split:
            time.sleep(self.split)
        out.write(payload)
        out.flush()
        handler.close_connection = True

    def _accept_outcome(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        if self.outcome_hang:
            self._release.wait(RUN_TIMEOUT)
            return
        # The iRule has closed its end already; answering may meet a reset.
        with contextlib.suppress(OSError):
            handler.wfile.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            handler.wfile.flush()

    def _decide(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str]:
        if handler.path != "/scheduler/select":
            return 404, "not found"
        if not handler.headers.get("Content-Type", "").startswith("application/json"):
            return 400, '{"detail": "content-type"}'
        try:
            request = msgspec.json.decode(body, type=SelectRequest)
            for member in request.members:
                parse_member_key(member)
        except (msgspec.ValidationError, msgspec.DecodeError, MemberAddressError) as err:
            return 400, json.dumps({"detail": str(err)})
        answer = self.answer(request) if callable(self.answer) else self.answer
        return self.status, answer


@pytest.fixture
def select_api() -> Iterator[SelectApiStandIn]:
    api = SelectApiStandIn().start()
    try:
        yield api
    finally:
        api.stop()


# --------------------------------------------------------------------------- harness


@dataclass
class Responded:
    """What the rule answered the client itself (``HTTP::respond``)."""

    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Decision:
    line: str
    """First stdout line: ``pool P member A N`` or ``pool P``."""
    reselect: str | None
    stdout: str
    stderr: str
    elapsed: float
    returncode: int
    responded: Responded | None = None
    http_response: int | None = None
    """The status HTTP_RESPONSE ran with (None: the event did not run)."""
    collected: int | None = None
    """The bytes HTTP_RESPONSE_DATA ran with after HTTP::collect (None: it did not run)."""

    def __str__(self) -> str:
        """Everything the harness said: the message of a failed assertion."""
        return (f"harness exit {self.returncode} after {self.elapsed:.2f}s\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}")

    @property
    def open_sideband(self) -> int:
        match = re.search(r"sideband_open=(\d+)", self.stderr)
        assert match, self
        return int(match.group(1))

    @property
    def events(self) -> list[str]:
        match = re.search(r"^harness: events (.*)$", self.stderr, flags=re.M)
        assert match, self
        return match.group(1).split()

    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("log local0.warn")]


def tclsh() -> str:
    path = shutil.which("tclsh")
    assert path, "tclsh is needed to run the iRule (apt-get install tcl)"
    return path


def harness_argv(
    api: str,
    members: list[tuple[str, int] | tuple[str, int, str] | tuple[str, int, str, int]],
    *,
    pool: str = POOL,
    connect_timeout: int = CONNECT_TIMEOUT_MS,
    timeout: int = TIMEOUT_MS,
    lb_failed: bool = False,
    response: int | None = None,
    response_after: int = 0,
    response_api: str | None = None,
    outcome_timeout: int = CONNECT_TIMEOUT_MS,
    irule: Path = IRULE,
    extra: tuple[str, ...] = (),
) -> list[str]:
    argv = [tclsh(), str(HARNESS), "-api", api, "-pool", pool,
            "-connect-timeout", str(connect_timeout), "-timeout", str(timeout), "-debug", "1",
            "-set", "llmsched_outcome_timeout_ms", str(outcome_timeout)]
    for member in members:
        argv += ["-member", " ".join(str(part) for part in member)]
    if lb_failed:
        argv += ["-lb-failed", "1"]
    if response is not None:
        argv += ["-response", str(response), "-response-after", str(response_after)]
    if response_api is not None:
        argv += ["-response-api", response_api]
    return [*argv, *extra, str(irule)]


def _decision(stdout: str, stderr: str, elapsed: float, returncode: int) -> Decision:
    lines = stdout.splitlines()
    decision = Decision(
        line=lines[0] if lines else "",
        reselect=next((x for x in lines[1:] if x.startswith(("LB::reselect", "no reselect"))),
                      None),
        stdout=stdout,
        stderr=stderr,
        elapsed=elapsed,
        returncode=returncode,
    )
    headers: dict[str, str] = {}
    for line in lines[1:]:
        word, _, rest = line.partition(" ")
        if word == "respond":
            decision.responded = Responded(int(rest), headers, "")
        elif word == "respond-header":
            name, _, value = rest.partition(" ")
            headers[name] = value
        elif word == "respond-body" and decision.responded is not None:
            decision.responded.body = rest
        elif word == "http_response":
            decision.http_response = int(rest)
        elif word == "http_response_data":
            decision.collected = int(rest)
    return decision


def run_irule(api: str, members: list[Any], **kwargs: Any) -> Decision:
    """Run the harness to completion (the API must not live in this thread's event loop)."""
    argv = harness_argv(api, members, **kwargs)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(_overran(err.stdout, err.stderr)) from None
    return _decision(proc.stdout, proc.stderr, time.monotonic() - start, proc.returncode)


def _overran(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(out: str | bytes | None) -> str:
        return out.decode(errors="replace") if isinstance(out, bytes) else out or ""

    return (f"harness still running after {RUN_TIMEOUT}s\n"
            f"--- stdout\n{text(stdout)}--- stderr\n{text(stderr)}")


async def run_irule_async(api: str, members: list[Any], **kwargs: Any) -> Decision:
    """The same, without blocking the event loop the in-process API runs in."""
    argv = harness_argv(api, members, **kwargs)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(_overran(out, err)) from None
    assert proc.returncode is not None
    return _decision(out.decode(), err.decode(), time.monotonic() - start, proc.returncode)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_pool_lb(decision: Decision) -> None:
    assert decision.returncode == 0, decision
    assert decision.line == f"pool {POOL}", decision
    assert decision.open_sideband == 0, decision


def assert_member(decision: Decision, host: str, port: int, pool: str = POOL) -> None:
    assert decision.returncode == 0, decision
    assert decision.line == f"pool {pool} member {host} {port}", decision


# --------------------------------------------------------------------------- scenarios


def test_answered_member_that_is_up_gets_the_request(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9002"
    decision = run_irule(select_api.address, THREE)
    assert_member(decision, "127.0.0.1", 9002)
    assert decision.open_sideband == 0, decision
    [request] = select_api.received
    assert request.json() == {"pool_name": "demo-pool", "partition": "Common", "members": KEYS}
    assert request.path == "/scheduler/select"
    assert request.headers["content-type"] == "application/json"
    assert int(request.headers["content-length"]) == len(request.body)


def test_each_answer_is_followed(select_api: SelectApiStandIn) -> None:
    # The decision follows the answer, not a position in the list.
    for key, (host, port) in zip(KEYS, THREE, strict=True):
        select_api.answer = key
        assert_member(run_irule(select_api.address, THREE), host, port)


@pytest.mark.parametrize("status", ["down", "session_disabled", "session_enabled"])
def test_answered_member_not_up_leaves_pool_lb(select_api: SelectApiStandIn,
                                               status: str) -> None:
    select_api.answer = "127.0.0.1:9002"
    members = [("127.0.0.1", 9001, "up"), ("127.0.0.1", 9002, status), ("127.0.0.1", 9003, "up")]
    decision = run_irule(select_api.address, members)
    assert_pool_lb(decision)
    assert len(select_api.received) == 1, decision


@pytest.mark.parametrize("answer", ["none", "fallback", "none\n", "10.9.9.9:9002",
                                    "127.0.0.1:9004", "<html>oops</html>", ""])
def test_non_member_answers_leave_pool_lb(select_api: SelectApiStandIn, answer: str) -> None:
    select_api.answer = answer
    decision = run_irule(select_api.address, THREE)
    assert_pool_lb(decision)
    assert len(select_api.received) == 1, decision


@pytest.mark.parametrize("status", [500, 503, 400, 404])
def test_error_status_leaves_pool_lb(select_api: SelectApiStandIn, status: int) -> None:
    select_api.status = status
    select_api.answer = "127.0.0.1:9001"  # even a member in the body must not be used
    decision = run_irule(select_api.address, THREE)
    assert_pool_lb(decision)
    assert f"HTTP {status}" in decision.stderr, decision


def test_hanging_api_leaves_pool_lb_within_the_timeout(select_api: SelectApiStandIn) -> None:
    select_api.hang = True  # never answers before the end of the test
    timeout_ms = 1000
    decision = run_irule(select_api.address, THREE, timeout=timeout_ms)
    assert_pool_lb(decision)
    assert len(select_api.received) == 1, decision
    assert f"no answer within {timeout_ms} ms" in decision.stderr, decision
    # It waited for the time-out, and gave up long before the hang would have ended.
    assert timeout_ms / 1000 * 0.9 <= decision.elapsed < RUN_TIMEOUT / 2, decision


def test_slow_answer_within_the_timeout_is_used(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9003"
    select_api.delay = 0.5
    assert_member(run_irule(select_api.address, THREE), "127.0.0.1", 9003)


def test_closed_api_port_leaves_pool_lb() -> None:
    # A refused connection is known at once: the rule does not sit out the connect time-out.
    connect_ms = 20_000
    decision = run_irule(f"127.0.0.1:{closed_port()}", THREE, connect_timeout=connect_ms)
    assert_pool_lb(decision)
    assert "no connection to" in decision.stderr, decision
    assert decision.elapsed < connect_ms / 1000 / 2, decision


def test_route_domain_and_ipv6_members_are_sent_as_keys(select_api: SelectApiStandIn) -> None:
    members = [("10.1.1.5%2", 8001), ("fd00::7", 8002), ("fd00::8%3", 8003),
               ("2001:db8::1", 8004)]
    select_api.answer = "[fd00::8]:8003"
    decision = run_irule(select_api.address, members)
    [request] = select_api.received
    assert request.json()["members"] == [
        "10.1.1.5:8001", "[fd00::7]:8002", "[fd00::8]:8003", "[2001:db8::1]:8004"], decision
    # The pool command gets the F5 address back, route domain included.
    assert_member(decision, "fd00::8%3", 8003)


def test_route_domain_answer_maps_back_to_the_f5_address(select_api: SelectApiStandIn) -> None:
    select_api.answer = "10.1.1.5:8001"
    members = [("10.1.1.5%2", 8001), ("10.1.1.6%2", 8001)]
    assert_member(run_irule(select_api.address, members), "10.1.1.5%2", 8001)


@pytest.mark.parametrize(("pool", "name", "partition"), [
    ("/Common/demo-pool", "demo-pool", "Common"),
    ("/Tenant_A/llm-pool-1", "llm-pool-1", "Tenant_A"),
    ("/Tenant_A/app1/llm-pool-1", "llm-pool-1", "Tenant_A"),
    ("llm-pool-1", "llm-pool-1", "Common"),
])
def test_pool_name_and_partition(select_api: SelectApiStandIn, pool: str, name: str,
                                 partition: str) -> None:
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, pool=pool)
    assert_member(decision, "127.0.0.1", 9001, pool)
    body = select_api.received[0].json()
    assert (body["pool_name"], body["partition"]) == (name, partition), decision


def test_inactive_members_are_not_offered(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9003"
    members = [("127.0.0.1", 9001, "up", 1), ("127.0.0.1", 9002, "down", 0),
               ("127.0.0.1", 9003, "up", 1)]
    decision = run_irule(select_api.address, members)
    assert select_api.received, decision
    assert select_api.received[0].json()["members"] == ["127.0.0.1:9001", "127.0.0.1:9003"]
    assert_member(decision, "127.0.0.1", 9003)


def test_single_active_member_skips_the_api(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, [("127.0.0.1", 9001, "up", 1),
                                              ("127.0.0.1", 9002, "down", 0)])
    assert_pool_lb(decision)
    assert select_api.received == [], decision


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_other_response_framings_are_parsed(select_api: SelectApiStandIn, framing: str) -> None:
    select_api.answer = "127.0.0.1:9002"
    select_api.framing = framing
    assert_member(run_irule(select_api.address, THREE), "127.0.0.1", 9002)


def test_answer_arriving_in_two_reads_is_assembled(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9003"
    select_api.split = 0.5
    assert_member(run_irule(select_api.address, THREE), "127.0.0.1", 9003)


def test_lb_failed_after_a_pick_reselects_in_the_pool(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, lb_failed=True)
    assert_member(decision, "127.0.0.1", 9001)
    assert decision.reselect == f"LB::reselect pool {POOL}", decision


def test_lb_failed_after_pool_lb_does_not_reselect(select_api: SelectApiStandIn) -> None:
    select_api.answer = "none"
    decision = run_irule(select_api.address, THREE, lb_failed=True)
    assert decision.line == f"pool {POOL}", decision
    assert decision.reselect == "no reselect", decision


def test_unscheduled_path_skips_the_api(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9001"
    extra = ("-set", "llmsched_uri_glob", "/v1/*", "-path", "/health")
    decision = run_irule(select_api.address, THREE, extra=extra)
    assert_pool_lb(decision)
    assert select_api.received == [], decision
    extra = ("-set", "llmsched_uri_glob", "/v1/*", "-path", "/v1/completions")
    assert_member(run_irule(select_api.address, THREE, extra=extra), "127.0.0.1", 9001)


def test_virtual_without_pool_is_left_alone(select_api: SelectApiStandIn) -> None:
    decision = run_irule(select_api.address, THREE, pool="")
    assert decision.returncode == 0, decision
    assert decision.line == "none", decision
    assert "no pool" in decision.stderr, decision
    assert select_api.received == [], decision


# --------------------------------------------------------------------------- busy and reports


def assert_busy_503(decision: Decision, retry_after: str) -> None:
    """The client got the overload answer, and BIG-IP was told to send nothing anywhere."""
    assert decision.returncode == 0, decision
    assert decision.line == "none", decision  # no `pool` command: no member, no pool LB
    assert decision.responded is not None, decision
    assert decision.http_response is None, decision
    assert decision.open_sideband == 0, decision
    answer = decision.responded
    assert answer.status == 503, decision
    assert answer.headers.get("Retry-After") == retry_after, decision
    assert answer.headers.get("Content-Type") == "application/json", decision
    error = json.loads(answer.body)["error"]
    assert {k: v for k, v in error.items() if k != "message"} == {
        "type": "service_unavailable_error", "param": None, "code": "overloaded"}, decision
    assert retry_after in error["message"], decision


@pytest.mark.parametrize("retry_after", [None, "7"])
def test_busy_answers_503_without_the_pool(select_api: SelectApiStandIn,
                                           retry_after: str | None) -> None:
    select_api.answer = "busy"
    extra = () if retry_after is None else ("-set", "llmsched_busy_retry_after_s", retry_after)
    decision = run_irule(select_api.address, THREE, response=200, extra=extra)
    assert_busy_503(decision, retry_after or "2")
    assert decision.warnings() == [], decision
    assert "-> 503 busy" in decision.stderr, decision
    assert select_api.paths() == ["/scheduler/select"], decision  # nothing to report


@pytest.mark.parametrize("status", [200, 503])
def test_outcome_is_reported_after_a_pick(select_api: SelectApiStandIn, status: int) -> None:
    select_api.answer = "127.0.0.1:9002"
    after_ms = 250
    decision = run_irule(select_api.address, THREE, response=status, response_after=after_ms)
    assert_member(decision, "127.0.0.1", 9002)
    assert decision.http_response == status, decision
    assert decision.open_sideband == 0, decision
    assert decision.warnings() == [], decision
    select_api.wait_for(2, "outcome report", decision)
    assert select_api.paths() == ["/scheduler/select", "/scheduler/outcome"], decision
    report = select_api.received[1]
    assert report.headers["content-type"] == "application/json", report
    assert int(report.headers["content-length"]) == len(report.body), report
    body = report.json()
    ttft = body.pop("ttft_ms")
    assert body == {"pool_name": "demo-pool", "partition": "Common",
                    "member": "127.0.0.1:9002", "status": status}, (body, decision)
    # At least the time the server took; less than the whole run (a clock gone wrong).
    assert after_ms <= ttft <= after_ms + decision.elapsed * 1000 + 1, (ttft, decision)


def test_first_byte_report_times_the_streams_first_byte(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9002"
    headers_ms, first_byte_ms = 5, 300
    decision = run_irule(select_api.address, THREE, response=200, response_after=headers_ms,
                         extra=("-set", "llmsched_report_at", "first_byte",
                                "-first-byte-after", str(first_byte_ms)))
    assert_member(decision, "127.0.0.1", 9002)
    assert decision.collected == 1, decision  # HTTP::collect 1, then HTTP_RESPONSE_DATA
    assert decision.warnings() == [], decision
    assert decision.open_sideband == 0, decision
    select_api.wait_for(2, "outcome report", decision)
    assert select_api.paths() == ["/scheduler/select", "/scheduler/outcome"], decision
    body = select_api.received[1].json()
    ttft = body.pop("ttft_ms")
    assert body == {"pool_name": "demo-pool", "partition": "Common", "member": "127.0.0.1:9002",
                    "status": 200, "ttft_at": "first_token"}, (body, decision)
    assert first_byte_ms <= ttft <= first_byte_ms + decision.elapsed * 1000 + 1, (ttft, decision)


@pytest.mark.parametrize(("status", "content_type"), [(200, "application/json"),
                                                      (503, "text/event-stream")])
def test_first_byte_mode_reports_other_answers_at_their_headers(
        select_api: SelectApiStandIn, status: int, content_type: str) -> None:
    # Not a stream (or not a success): the headers' time, no TTFT claimed, nothing held.
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, response=status, response_after=40,
                         extra=("-set", "llmsched_report_at", "first_byte",
                                "-content-type", content_type, "-first-byte-after", "900"))
    assert decision.http_response == status, decision
    assert decision.collected is None, decision
    select_api.wait_for(2, "outcome report", decision)
    body = select_api.received[1].json()
    assert "ttft_at" not in body and body["status"] == status, (body, decision)
    assert 40 <= body["ttft_ms"] < 900, (body, decision)


def test_headers_mode_never_collects_a_stream(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, response=200, response_after=10,
                         extra=("-first-byte-after", "900"))
    assert decision.collected is None, decision
    select_api.wait_for(2, "outcome report", decision)
    body = select_api.received[1].json()
    assert "ttft_at" not in body and body["ttft_ms"] < 900, (body, decision)


def test_reported_member_is_the_llmsched_key(select_api: SelectApiStandIn) -> None:
    select_api.answer = "[fd00::8]:8003"
    members = [("10.1.1.5%2", 8001), ("fd00::8%3", 8003)]
    decision = run_irule(select_api.address, members, pool="/Tenant_A/app1/llm-pool-1",
                         response=200)
    assert_member(decision, "fd00::8%3", 8003, "/Tenant_A/app1/llm-pool-1")
    select_api.wait_for(2, "outcome report", decision)
    body = select_api.received[1].json()
    assert (body["pool_name"], body["partition"], body["member"]) == (
        "llm-pool-1", "Tenant_A", "[fd00::8]:8003"), (body, decision)


def test_reports_can_be_turned_off(select_api: SelectApiStandIn) -> None:
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, response=200,
                         extra=("-set", "llmsched_report_outcomes", "0"))
    assert_member(decision, "127.0.0.1", 9001)
    assert decision.http_response == 200, decision
    assert decision.open_sideband == 0, decision
    assert select_api.paths() == ["/scheduler/select"], decision


@pytest.mark.parametrize("answer", ["none", "fallback", "127.0.0.1:9004"])
def test_no_report_when_the_pool_chose(select_api: SelectApiStandIn, answer: str) -> None:
    select_api.answer = answer
    decision = run_irule(select_api.address, THREE, response=200)
    assert_pool_lb(decision)
    assert decision.http_response == 200, decision
    assert select_api.paths() == ["/scheduler/select"], decision


def test_no_report_after_lb_failed(select_api: SelectApiStandIn) -> None:
    # The pool reselected: the answer is another member's, not the one llmsched picked.
    select_api.answer = "127.0.0.1:9001"
    decision = run_irule(select_api.address, THREE, lb_failed=True, response=200)
    assert decision.reselect == f"LB::reselect pool {POOL}", decision
    assert decision.http_response == 200, decision
    assert decision.open_sideband == 0, decision
    assert select_api.paths() == ["/scheduler/select"], decision


@pytest.mark.parametrize("log_errors", ["1", "0"])
def test_dead_api_does_not_break_the_response(select_api: SelectApiStandIn,
                                              log_errors: str) -> None:
    select_api.answer = "127.0.0.1:9003"
    decision = run_irule(select_api.address, THREE, response=200,
                         response_api=f"127.0.0.1:{closed_port()}",
                         extra=("-set", "llmsched_log_errors", log_errors, "-debug", "0"))
    assert_member(decision, "127.0.0.1", 9003)
    assert decision.http_response == 200, decision
    assert decision.open_sideband == 0, decision
    warnings = decision.warnings()
    if log_errors == "1":
        assert len(warnings) == 1, decision
        assert "outcome not reported (no connection to" in warnings[0], decision
    else:
        assert warnings == [], decision
    assert select_api.paths() == ["/scheduler/select"], decision


def test_report_never_waits_for_the_api(select_api: SelectApiStandIn) -> None:
    # The API takes the report and never answers: the response goes on regardless.
    select_api.answer = "127.0.0.1:9001"
    select_api.outcome_hang = True
    decision = run_irule(select_api.address, THREE, response=200, timeout=RUN_TIMEOUT_MS,
                         outcome_timeout=RUN_TIMEOUT_MS)
    assert_member(decision, "127.0.0.1", 9001)
    assert decision.warnings() == [], decision
    assert decision.open_sideband == 0, decision
    assert decision.elapsed < RUN_TIMEOUT / 2, decision
    select_api.wait_for(2, "outcome report", decision)


# --------------------------------------------------------------------------- the rule itself


def test_harness_reports_a_tcl_error_in_the_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tcl"
    broken.write_text("when HTTP_REQUEST {\n    no_such_command\n}\n")
    decision = run_irule(f"127.0.0.1:{closed_port()}", THREE, irule=broken)
    assert decision.returncode == 1, decision
    assert decision.line.startswith("error: HTTP_REQUEST"), decision


def test_rule_init_defaults_are_sane() -> None:
    text = IRULE.read_text()
    statics = dict(re.findall(r"set static::(\w+) +(\S+)", text))
    assert {"llmsched_api", "llmsched_connect_timeout_ms", "llmsched_timeout_ms",
            "llmsched_partition", "llmsched_debug"} <= set(statics)
    assert statics["llmsched_debug"] == "0"
    assert 0 < int(statics["llmsched_connect_timeout_ms"]) <= 1000
    assert 0 < int(statics["llmsched_timeout_ms"]) <= 1000
    assert statics["llmsched_partition"] == '"Common"'
    assert statics["llmsched_busy_retry_after_s"] == "2"
    assert statics["llmsched_report_outcomes"] == "1"
    assert statics["llmsched_report_at"] == '"headers"'  # never hold headers unasked
    assert statics["llmsched_outcome_path"] == '"/scheduler/outcome"'
    # The client's response waits for a report's connect and send: keep them short.
    assert 0 < int(statics["llmsched_outcome_timeout_ms"]) <= 100


# Commands and syntax newer than Tcl 8.4, or disabled inside iRules.
_NOT_IN_IRULES = [
    (r"\{\*\}", "{*} expansion (Tcl 8.5)"),
    (r"\b(dict|lassign|lmap|apply|lrepeat|lreverse|coroutine|yield|tailcall|throw)\b",
     "Tcl 8.5+ command"),
    (r"\btry\s*\{", "try (Tcl 8.6)"),
    (r"\bchan\s", "chan (Tcl 8.5)"),
    (r"\bstring\s+(cat|reverse|is\s+entier)\b", "Tcl 8.5+ string subcommand"),
    (r"\blsearch\b[^\]\n]*-(nocase|index|subindices|bisect)", "Tcl 8.5+ lsearch option"),
    (r"\*\*", "** operator (Tcl 8.5)"),
    (r"\b(if|while|expr)\s*\{[^{}]*\s(in|ni)\s", "in/ni operator (Tcl 8.5)"),
    (r"\b(vwait|update|socket|exec|open|source|after|file)\s", "disabled in iRules"),
]


def test_rule_uses_only_tcl_84_irule_syntax() -> None:
    code = "\n".join(line for line in IRULE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for pattern, why in _NOT_IN_IRULES:
        match = re.search(pattern, code)
        assert match is None, f"{why}: {match.group(0)!r}" if match else ""
    events = re.findall(r"^when\s+(\w+)", code, flags=re.M)
    assert events == ["RULE_INIT", "CLIENT_ACCEPTED", "HTTP_REQUEST", "LB_FAILED",
                      "HTTP_REQUEST_SEND", "HTTP_RESPONSE", "HTTP_RESPONSE_DATA"]


def test_tcl_sees_every_event_of_the_rule() -> None:
    # An unbalanced brace inside a string swallows the events after it into one body.
    written = re.findall(r"^when\s+(\w+)", IRULE.read_text(), flags=re.M)
    decision = run_irule(f"127.0.0.1:{closed_port()}", THREE)
    assert decision.events == written, decision


def test_lint_catches_newer_tcl() -> None:
    newer = ["foreach {a b} $x break; lassign $x a b", "if {$a in $list} {}",
             "set d [dict create]", "eval {*}$cmd", "after 10"]
    for snippet in newer:
        assert any(re.search(p, snippet) for p, _ in _NOT_IN_IRULES), snippet


# --------------------------------------------------------------------------- real system
# The same iRule against the real API and scheduler (in-process, real NATS/Redis), to
# prove the two agree on the wire: the keys the iRule sends, the answers it parses.

R1, R2 = "127.0.0.1:9101", "127.0.0.1:9102"
R_V6, R_RD = "[fd00::7]:8000", "10.1.1.5:8001"
LOSER = (10.0, 1.0, 1.0)
"""(waiting, running, kv) that scores 0 under S1: the longest queue and a full KV cache."""
SELECT_WAIT_S = 30.0
"""How long the real API may take to see the published metrics (a busy machine is slow)."""


def _real_pool(members: list[str], **fallback: object) -> dict[str, object]:
    return {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
            "members": members, "fallback": dict(fallback)}


def _api(stack: Stack) -> str:
    return stack.api_url.removeprefix("http://")


@pytest.mark.integration
async def test_real_api_pick_is_followed(make_stack: StackFactory) -> None:
    stack = await make_stack([_real_pool([R1, R2])], metrics_ms=5000)
    await stack.bus.snapshot("p1", [R1, R2])
    await stack.bus.metrics("p1", {R1: LOSER, R2: (0, 1, 0.1)})
    await stack.wait_select("p1", [R1, R2], R2, timeout_s=SELECT_WAIT_S)
    decision = await run_irule_async(_api(stack), [("127.0.0.1", 9101), ("127.0.0.1", 9102)],
                                     pool="/Common/p1")
    assert_member(decision, "127.0.0.1", 9102, "/Common/p1")
    assert decision.open_sideband == 0, decision


@pytest.mark.integration
async def test_real_api_ipv6_and_route_domain_keys(make_stack: StackFactory) -> None:
    stack = await make_stack([_real_pool([R_V6, R_RD])], metrics_ms=5000)
    await stack.bus.snapshot("p1", [R_V6, R_RD])
    await stack.bus.metrics("p1", {R_V6: (0, 0, 0.2), R_RD: LOSER})
    await stack.wait_select("p1", [R_V6, R_RD], R_V6, timeout_s=SELECT_WAIT_S)
    members = [("fd00::7%2", 8000), ("10.1.1.5%2", 8001)]
    decision = await run_irule_async(_api(stack), members, pool="/Common/p1")
    assert_member(decision, "fd00::7%2", 8000, "/Common/p1")

    await stack.bus.metrics("p1", {R_V6: LOSER, R_RD: (0, 0, 0.2)})
    await stack.wait_select("p1", [R_V6, R_RD], R_RD, timeout_s=SELECT_WAIT_S)
    decision = await run_irule_async(_api(stack), members, pool="/Common/p1")
    assert_member(decision, "10.1.1.5%2", 8001, "/Common/p1")


@pytest.mark.integration
async def test_real_api_fallback_and_none_leave_pool_lb(make_stack: StackFactory) -> None:
    stack = await make_stack([_real_pool([R1, R2], pool_fallback=True)], metrics_ms=5000)
    members = [("127.0.0.1", 9101), ("127.0.0.1", 9102)]
    decision = await run_irule_async(_api(stack), members, pool="/Common/p1")
    assert decision.line == "pool /Common/p1", decision
    assert "API answered fallback" in decision.stderr, decision
    decision = await run_irule_async(_api(stack), members, pool="/Common/unknown")
    assert decision.line == "pool /Common/unknown", decision
    assert "API answered none" in decision.stderr, decision


GREYBOX = {"name": "gb", "type": "greybox",
           "greybox": {"max_inflight": 1, "select_inflight_ttl_s": 600}}
"""One request in flight per member; a pick counts until its outcome (no expiry in a test)."""
F5_MEMBERS = [("127.0.0.1", 9101), ("127.0.0.1", 9102)]


async def _greybox_stack(make_stack: StackFactory) -> Stack:
    pool = {**_real_pool([R1, R2]), "mode": "gb"}
    stack: Stack = await make_stack([pool], extra={"modes": [GREYBOX]})
    await stack.bus.snapshot("p1", [R1, R2])

    async def known() -> bool:
        return await _inflight(stack) == {R1: 0, R2: 0}
    await wait_until(known, SELECT_WAIT_S, "the greybox pool's members")
    return stack


async def _pool_status(stack: Stack) -> dict[str, Any]:
    r = await stack.http.get(f"{stack.api_url}/pools/p1/Common/status")
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()
    return status


async def _inflight(stack: Stack) -> dict[str, int]:
    return {m["key"]: m["inflight"] for m in (await _pool_status(stack))["members"]}


async def _wait_inflight(stack: Stack, expect: dict[str, int], decision: Decision) -> None:
    seen: list[dict[str, int]] = []

    async def check() -> bool:
        seen.append(await _inflight(stack))
        return seen[-1] == expect
    try:
        await wait_until(check, SELECT_WAIT_S, f"in flight {expect}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen {seen[-1:]}\n{decision}") from None


def _picked_key(decision: Decision) -> str:
    for host, port in F5_MEMBERS:
        if decision.line == f"pool /Common/p1 member {host} {port}":
            return f"{host}:{port}"
    raise AssertionError(f"no member picked\n{decision}")


@pytest.mark.integration
async def test_real_api_outcome_report_ends_the_pick(make_stack: StackFactory) -> None:
    stack = await _greybox_stack(make_stack)
    # Without reports a pick stays in flight (until select_inflight_ttl_s).
    quiet = await run_irule_async(_api(stack), F5_MEMBERS, pool="/Common/p1", response=200,
                                  extra=("-set", "llmsched_report_outcomes", "0"))
    kept = _picked_key(quiet)
    other = R2 if kept == R1 else R1
    await _wait_inflight(stack, {kept: 1, other: 0}, quiet)

    events: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(msg.data)

    sub = await stack.bus.nc.subscribe(stack.bus.subjects.request_outcome, cb=on_event)
    await stack.bus.nc.flush()
    decision = await run_irule_async(_api(stack), F5_MEMBERS, pool="/Common/p1", response=200,
                                     response_after=120)
    assert _picked_key(decision) == other, decision  # the kept member is at its limit
    assert decision.open_sideband == 0 and decision.warnings() == [], decision
    try:
        raw = await asyncio.wait_for(events.get(), SELECT_WAIT_S)
    except TimeoutError:
        raise AssertionError(f"no outcome event on the bus\n{decision}") from None
    finally:
        await sub.unsubscribe()
    event = msgspec.json.decode(raw, type=OutcomeEvent)
    assert (event.request_id, event.pool, event.partition, event.member, event.status) == (
        "", "p1", "Common", other, 200), (event, decision)
    assert event.ttft_s is not None and event.ttft_s >= 0.12, (event, decision)

    assert event.ttft_at == "headers", (event, decision)  # the iRule times the headers

    # The report took the reported member's pick: it leaves at the member's next scrape
    # (the engine's own figures hold the request then); the quiet one still counts.
    async def scraped() -> bool:
        await stack.bus.metrics("p1", {R1: (0.0, 0.0, 0.1), R2: (0.0, 0.0, 0.1)})
        return await _inflight(stack) == {kept: 1, other: 0}
    await wait_until(scraped, SELECT_WAIT_S, f"{other}'s pick ended by a scrape after its report")

    # A header time is not a TTFT: it never teaches the predictor.
    members = (await _pool_status(stack))["members"]
    model = next(m["greybox"]["model"] for m in members if m["key"] == other)
    assert model["samples"] == 0, model


@pytest.mark.integration
async def test_real_api_busy_answers_the_client_503(make_stack: StackFactory) -> None:
    stack = await _greybox_stack(make_stack)
    picked = []
    for _ in range(2):  # no reports: each pick stays in flight, one per member
        decision = await run_irule_async(_api(stack), F5_MEMBERS, pool="/Common/p1")
        picked.append(_picked_key(decision))
    assert sorted(picked) == [R1, R2], picked
    decision = await run_irule_async(_api(stack), F5_MEMBERS, pool="/Common/p1", response=200)
    assert_busy_503(decision, "2")
    assert "-> 503 busy" in decision.stderr, decision
    await _wait_inflight(stack, {R1: 1, R2: 1}, decision)
