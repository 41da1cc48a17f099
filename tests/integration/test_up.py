"""The README's run command: `llmsched up` comes up, selects, and stops every process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.auth import ADMIN_KEY_ENV
from shared.http_server import free_port
from tests.integration.up_process import UpProcess, get, wait_for_member

pytestmark = pytest.mark.integration


def test_up_runs_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services", "up", "--run-dir",
                             str(tmp_path / "run"), "--api-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        out = "".join(lines)
        assert "llmsched is up." in out, out
        body = json.loads(re.search(r"-d '(\{\"pool_name[^']*)'", out).group(1))  # type: ignore[union-attr]
        api = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as http:
            deadline = time.monotonic() + 20
            answer = ""
            while time.monotonic() < deadline:
                answer = http.post(f"{api}/scheduler/select", json=body).text
                if answer in body["members"]:
                    break
                time.sleep(0.3)
            assert answer in body["members"], answer
            deadline = time.monotonic() + 20
            while "demo-worker" not in http.get(f"{api}/admin/workers").text:
                assert time.monotonic() < deadline, "worker never registered"
                time.sleep(0.3)
        # The printed OpenAI SDK snippet works as pasted, through the gateway.
        snippet = re.search(r"\n  (\S+) - <<'EOF'\n(.*?)\nEOF\n", out, re.S)
        assert snippet is not None, out
        python, code = snippet.group(1), snippet.group(2)
        ran = subprocess.run([python, "-"], input=code, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 0, (ran.stdout, ran.stderr)
        assert "chat" in ran.stdout and "fake-model" in ran.stdout, ran.stdout
        with httpx.Client(timeout=10) as http:
            status = http.get(f"{api}/admin/status").json()
            aliases = {m["alias"]: m for m in status["models"]}
            assert {"chat", "fake-model"} <= set(aliases), status
            assert any(i["state"] == "ACTIVE" for i in aliases["chat"]["instances"]), status
        config = tmp_path / "run" / "config.yaml"
        config.write_text(config.read_text().replace("pool_fallback: false",
                                                      "pool_fallback: true"))
        with httpx.Client(timeout=10) as http:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if http.post(f"{api}/scheduler/select", json=body).text == "fallback":
                    break
                time.sleep(0.3)
            else:
                pytest.fail("pool_fallback written into the file did not answer fallback")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, rest
    assert "Stopped." in rest
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True,
                               text=True).stdout.split()
    assert leftovers == [], leftovers


def test_up_with_an_admin_key_sends_it_on_every_internal_call(tmp_path: Path) -> None:
    key = "k-" + os.urandom(6).hex()
    with UpProcess(tmp_path / "run", "--api-port", str(free_port()),
                   env={ADMIN_KEY_ENV: key}) as up:
        out = up.wait_up()
        api, body = up.api, up.select_body()
        wait_for_member(api, body)
        assert f'-H "Authorization: Bearer ${ADMIN_KEY_ENV}"' in out, out
        assert key not in out, "the key itself must not be printed"
        status, text = get(f"{api}/admin/workers")
        assert status == 401, (status, text)
        deadline = time.monotonic() + 30
        while True:
            status, text = get(f"{api}/admin/workers", {"authorization": f"Bearer {key}"})
            if status == 200 and "demo-worker" in text:
                break
            assert time.monotonic() < deadline, (status, text, up.log_tails())
            time.sleep(0.3)
        out = up.stop()
    assert up.returncode == 0, out
