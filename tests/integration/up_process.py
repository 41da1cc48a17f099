"""`python -m services up` as a child process: what it prints, its pids.json, select loops."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

UP_TIMEOUT_S = 150.0


class UpProcess:
    """``llmsched up`` with embedded NATS/Valkey; ``with`` stops it and checks nothing is left."""

    def __init__(self, run_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        full_env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services", "up", "--run-dir", str(run_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
            start_new_session=True)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.returncode: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """The first match of regex ``pattern`` in the output; fails if up exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.search(pattern, self.output)
            if found:
                return found
            if self.proc.poll() is not None:
                self._reader.join(5)
                found = re.search(pattern, self.output)
                if found:
                    return found
                raise AssertionError(f"up exited ({self.proc.returncode}) before printing "
                                     f"{pattern!r}:\n{self.output}\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} after {timeout_s} s:\n{self.output}\n"
                                     f"{self.log_tails()}")
            time.sleep(0.2)

    def wait_up(self) -> str:
        self.wait_for(r"Press Ctrl-C", UP_TIMEOUT_S)
        return self.output

    def wait_exit(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up still running after {timeout_s} s:\n{self.output}") from None
        self._reader.join(5)
        self.returncode = code
        return code

    @property
    def api(self) -> str:
        return self.wait_for(r"API:\s+(http://\S+)").group(1)

    def select_body(self) -> dict[str, Any]:
        found = self.wait_for(r"-d '(\{\"pool_name[^']*)'")
        body: dict[str, Any] = json.loads(found.group(1))
        return body

    def pids(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.run_dir / "pids.json").read_text())
        return data

    def pid(self, child: str) -> int | None:
        pid: int | None = self.pids()["children"][child]["pid"]
        return pid

    def log(self, child: str) -> str:
        return (self.run_dir / "logs" / f"{child}.log").read_text(errors="replace")

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted((self.run_dir / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def log_lines_at(self, stamps: list[str], limit: int = 60) -> str:
        """Every service log's lines written in the seconds ``stamps`` (``HH:MM:SS``)."""
        out = []
        for path in sorted((self.run_dir / "logs").glob("*.log")):
            hits = [line for line in path.read_text(errors="replace").splitlines()
                    if any(stamp in line for stamp in stamps)]
            if hits:
                out.append(f"--- {path.name} ---\n" + "\n".join(hits[:limit]))
        return "\n".join(out)

    def stop(self) -> str:
        """SIGINT, as Ctrl-C does; returns everything up printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.returncode = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.kill_all()
        self._reader.join(5)
        return self.output

    def kill_all(self) -> None:
        """Last resort after a failure: SIGKILL up and every pid its pids.json names."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = self.pids()
            pids = [c["pid"] for c in data["children"].values() if c["pid"]]
            for pid in [*pids, *data["servers"].values()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def leftovers(self) -> list[str]:
        """Processes whose command line names this run dir (none once up has stopped)."""
        found = subprocess.run(["pgrep", "-af", str(self.run_dir)], capture_output=True,
                               text=True).stdout
        return [line for line in found.splitlines() if "pgrep" not in line]

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def select(api: str, body: dict[str, Any], timeout_s: float = 60.0,
           headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One select on a new connection: (status, body text)."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout_s)
    try:
        conn.request("POST", "/scheduler/select", json.dumps(body),
                     {"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 30.0
        ) -> tuple[int, str]:
    """One GET on a new connection: (status, body text)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout_s)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def wait_for_member(api: str, body: dict[str, Any], timeout_s: float = 60.0,
                    headers: dict[str, str] | None = None) -> str:
    """Poll select until it names one of the body's members (the pool state arrived)."""
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[int, str]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, text = select(api, body, headers=headers)
            seen.append((status, text))
            if status == 200 and text in body["members"]:
                return text
        time.sleep(0.3)
    raise AssertionError(f"select never named a member; last answers {seen[-5:]}")


class SelectLoop:
    """Threads that select on a new connection each time and record every failure."""

    def __init__(self, api: str, body: dict[str, Any], threads: int = 3) -> None:
        self.api = api
        self.body = body
        self.ok = 0
        self.failures: list[str] = []
        self.phase = "start"
        """What the test is doing now; each failure names it."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = f"{time.strftime('%H:%M:%S')} [{self.phase}]"
            try:
                status, text = select(self.api, self.body)
            except OSError as err:
                with self._lock:
                    self.failures.append(f"{started} {type(err).__name__}: {err}")
                continue
            with self._lock:
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{started} HTTP {status}: {text[:200]}")

    def start(self) -> SelectLoop:
        for t in self._threads:
            t.start()
        return self

    def wait_more(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` more selects succeeded."""
        target = self.ok + count
        deadline = time.monotonic() + timeout_s
        while self.ok < target:
            assert time.monotonic() < deadline, f"only {self.ok} of {target} selects succeeded"
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)
