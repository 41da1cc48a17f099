"""Child processes kept running: one that exits is restarted with backoff until ``stop``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Say = Callable[[str], None]


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``first_s`` doubling up to ``max_s``; reset after ``stable_s`` of uptime."""

    first_s: float = 0.5
    max_s: float = 10.0
    stable_s: float = 30.0

    def next(self, previous: float | None, uptime_s: float) -> float:
        if previous is None or uptime_s >= self.stable_s:
            return self.first_s
        return min(previous * 2, self.max_s)


@dataclass
class ChildSpec:
    """How to start one child; ``after_restart`` runs in a thread after every restart."""

    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    after_restart: Callable[[], None] | None = None


@dataclass
class Child:
    """One supervised child: its current process, or when it starts again."""

    spec: ChildSpec
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay_s: float | None = None
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)
    """Every pid this child has had, oldest first."""


def describe_exit(code: int) -> str:
    """``code 1`` or ``code -9 (SIGKILL)``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


class Supervisor:
    """Starts children, restarts the ones that exit, writes ``pids.json``, stops them all."""

    def __init__(self, log_dir: Path, env: dict[str, str], pids_path: Path, say: Say, *,
                 backoff: Backoff | None = None) -> None:
        self.log_dir = log_dir
        self.env = env
        self.pids_path = pids_path
        self.say = say
        self.backoff = backoff or Backoff()
        self.children: list[Child] = []
        self.servers: dict[str, int] = {}
        """Pids of processes started elsewhere (embedded NATS/Valkey), listed in pids.json."""
        self.stopping = threading.Event()

    def start(self, spec: ChildSpec) -> Child:
        """Start a child now and keep it running."""
        child = Child(spec, self.log_dir / f"{spec.name}.log")
        self.children.append(child)
        self._spawn(child)
        self.write_pids()
        return child

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    def _spawn(self, child: Child) -> None:
        with open(child.log_path, "ab") as log:
            if child.restarts:
                log.write(f"--- llmsched up: restart {child.restarts} of {child.spec.name} at "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
                log.flush()
            child.proc = subprocess.Popen(child.spec.argv, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env, start_new_session=True,
                                          pass_fds=child.spec.pass_fds)
        child.started_at = time.monotonic()
        child.restart_at = None
        child.history.append(child.proc.pid)

    def poll(self) -> None:
        """Notice children that exited and restart the ones whose delay has passed."""
        if self.stopping.is_set():
            return
        now = time.monotonic()
        changed = False
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                child.delay_s = self.backoff.next(child.delay_s, now - child.started_at)
                child.restart_at = now + child.delay_s
                child.proc = None
                self.say(f"llmsched up: {child.spec.name} (pid {proc.pid}) exited with "
                         f"{describe_exit(proc.returncode)} after {now - child.started_at:.1f} s;"
                         f" restarting in {child.delay_s:g} s (log: {child.log_path})")
                changed = True
            elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                try:
                    self._spawn(child)
                except OSError as err:
                    child.delay_s = self.backoff.next(child.delay_s, 0.0)
                    child.restart_at = now + child.delay_s
                    self.say(f"llmsched up: {child.spec.name} could not start ({err}); "
                             f"retrying in {child.delay_s:g} s")
                    continue
                assert child.proc is not None
                self.say(f"llmsched up: {child.spec.name} restarted as pid {child.proc.pid} "
                         f"(restart {child.restarts})")
                changed = True
                if child.spec.after_restart is not None:
                    threading.Thread(target=child.spec.after_restart, daemon=True,
                                     name=f"after-restart-{child.spec.name}").start()
        if changed:
            self.write_pids()

    def pids(self) -> dict[str, Any]:
        """What ``pids.json`` holds: this process, the servers and every child."""
        children: dict[str, Any] = {}
        for c in self.children:
            pid = c.proc.pid if c.proc is not None else None
            children[c.spec.name] = {"pid": pid, "log": str(c.log_path), "restarts": c.restarts,
                                     "previous_pids": [p for p in c.history if p != pid]}
        return {"up": os.getpid(), "servers": dict(self.servers), "children": children}

    def write_pids(self) -> None:
        tmp = self.pids_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.pids(), indent=2) + "\n")
        os.replace(tmp, self.pids_path)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every child (last started first), then SIGKILL those still running."""
        self.stopping.set()
        running = [c.proc for c in reversed(self.children) if c.proc is not None]
        for proc in running:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: engines it started too
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pids_path.unlink()
