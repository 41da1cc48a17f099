"""Every process entry point logs in the common format (shared/logs.py), one line per event."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.http_server import free_port

REPO = Path(__file__).resolve().parents[2]
STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "


def _argv(name: str, tmp_path: Path) -> list[str]:
    port = str(free_port())
    if name == "worker":
        return ["-m", "services", "worker", "--port", port, "--log-dir", str(tmp_path)]
    if name == "f5-emulator":
        return ["-m", "services.doubles.f5_emulator", "--port", port,
                "--pool", "Common/p=127.0.0.1:9001"]
    # demo-load: its targets need not exist for it to start and log
    return ["-m", "services.doubles.demo_load", "--targets", f"http://127.0.0.1:{free_port()}",
            "--model", "m", "--port", port, "--low", "0", "--high", "0"]


@pytest.mark.parametrize("name", ["worker", "f5-emulator", "demo-load"])
def test_entry_point_logs_in_the_common_format(name: str, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    env = dict(os.environ, F5_PASSWORD="pw", PYTHONUNBUFFERED="1")
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, *_argv(name, tmp_path)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not log.read_text(errors="replace").strip() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.05)
        time.sleep(0.5)  # let start-up finish: its later lines are checked too
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    assert lines, f"{name} logged nothing"
    pattern = re.compile(STAMP + re.escape(f"[{name}]") + r" [\w.]+: ")
    assert [line for line in lines if not pattern.match(line)] == [], text
