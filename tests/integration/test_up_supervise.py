"""`llmsched up` supervises: a killed service comes back and no select fails meanwhile."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from services.up.supervisor import Backoff
from shared.http_server import free_port
from tests.integration.up_process import SelectLoop, UpProcess, get, select, wait_for_member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def restarted(up: UpProcess, name: str, old_pid: int, timeout_s: float = 90.0) -> int:
    """The new pid of ``name`` once up reported the exit and the restart."""
    up.wait_for(rf"{re.escape(name)} \(pid {old_pid}\) exited with code -?\d+ .*restarting in "
                rf"[\d.]+ s \(log: \S*/logs/{re.escape(name)}\.log\)", timeout_s)
    deadline = time.monotonic() + timeout_s
    while (new := up.pid(name)) in (None, old_pid):
        assert time.monotonic() < deadline, f"{name} not restarted:\n{up.output}"
        time.sleep(0.2)
    assert new is not None
    up.wait_for(rf"{re.escape(name)} restarted as pid {new} ", timeout_s)
    assert old_pid in up.pids()["children"][name]["previous_pids"], up.pids()
    return new


def api_listening(up: UpProcess, name: str, timeout_s: float = 90.0) -> None:
    """The latest start of API process ``name`` is accepting on the shared socket."""
    deadline = time.monotonic() + timeout_s
    while "API listening on" not in up.log(name).rsplit("--- llmsched up: restart", 1)[-1]:
        assert time.monotonic() < deadline, f"{name} never listened again:\n{up.log_tails()}"
        time.sleep(0.2)


def scheduler_replicas(api: str, count: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        status, seen = get(f"{api}/health")
        if status == 200 and json.loads(seen)["checks"]["scheduler_replicas"] == count:
            return
        time.sleep(0.3)
    raise AssertionError(f"health never showed {count} scheduler replicas: {seen}")


def kill(up: UpProcess, name: str, sig: signal.Signals) -> int:
    pid = up.pid(name)
    assert pid is not None, up.pids()
    os.kill(pid, sig)
    return pid


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first_s=0.5, max_s=10.0, stable_s=30.0)
    delays: list[float] = []
    delay: float | None = None
    for _ in range(7):
        delay = backoff.next(delay, uptime_s=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.next(10.0, uptime_s=30.0) == 0.5


def test_killed_services_come_back_and_no_select_fails(tmp_path: Path) -> None:
    with UpProcess(tmp_path / "run", "--api-port", str(free_port())) as up:
        up.wait_up()
        api, body = up.api, up.select_body()
        wait_for_member(api, body)
        # Both replicas serving before one is killed (a replica serves once it holds the
        # configured pools, which can take a resync round after the first one does).
        scheduler_replicas(api, 2)
        loop = SelectLoop(api, body).start()
        try:
            loop.wait_more(20)
            # A scheduler replica, gracefully then abruptly: the API's retry covers both.
            for name, sig in (("scheduler-2", signal.SIGTERM), ("scheduler-1", signal.SIGKILL)):
                loop.phase = f"{name} {sig.name}"
                restarted(up, name, kill(up, name, sig))
                scheduler_replicas(api, 2)
                loop.wait_more(20)
            # One API process, then both at once, under load: requests in flight finish,
            # new connections wait in the shared socket's backlog until a process accepts.
            loop.phase = "api-1 SIGTERM"
            restarted(up, "api-1", kill(up, "api-1", signal.SIGTERM))
            api_listening(up, "api-1")
            loop.wait_more(20)
            loop.phase = "api-1 and api-2 SIGTERM"
            old = [kill(up, name, signal.SIGTERM) for name in ("api-1", "api-2")]
            for name, pid in zip(("api-1", "api-2"), old, strict=True):
                restarted(up, name, pid)
                api_listening(up, name)
            loop.wait_more(20)
        finally:
            loop.stop()
        assert loop.failures == [], (f"{len(loop.failures)} of {loop.ok + len(loop.failures)} "
                                     f"selects failed:\n" + "\n".join(loop.failures[:30])
                                     + "\nlogs then:\n"
                                     + up.log_lines_at([f[:8] for f in loop.failures[:5]]))
        # SIGKILL loses only requests in flight: none here, so none may fail. With the other
        # process alive it answers; with both killed, the backlog holds the connection.
        for victims in (("api-2",), ("api-1", "api-2")):
            old = [kill(up, name, signal.SIGKILL) for name in victims]
            answers = [select(api, body) for _ in range(10)]
            assert all(status == 200 and text in body["members"] for status, text in answers), \
                (victims, answers)
            for name, pid in zip(victims, old, strict=True):
                restarted(up, name, pid)
                api_listening(up, name)
        # The worker's engines live in its process: up starts them again on the same ports.
        restarted(up, "worker", kill(up, "worker", signal.SIGKILL))
        up.wait_for(r"demo engines started again on the restarted worker", 90)
        for engine in up.wait_for(r"Engines:\s+(.+)").group(1).split():
            assert get(f"{engine}/health")[0] == 200, engine
        wait_for_member(api, body)
        out = up.stop()
    assert up.returncode == 0, out
    assert "Stopped." in out
    assert not (tmp_path / "run" / "pids.json").exists(), "pids.json left behind after stop"
    assert up.leftovers() == [], up.leftovers()
