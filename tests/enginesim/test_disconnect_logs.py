"""A client that goes away is a normal event: one log line, no traceback (real child process)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \[engine-sim\] [\w.]+: ")
BODY_CUT = "client went away before its request body arrived"
ABORTED = "the client went away"


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "", parts.port or 80), timeout=30)


def _head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _generation(stream: bool) -> bytes:
    # Long enough to still be generating when the client leaves, even on a busy machine.
    return json.dumps({"model": "tiny", "prompt": "hello " * 40, "max_tokens": 4000,
                       "ignore_eos": True, "stream": stream}).encode()


def _wait_for(log: Path, count: int, what: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.count(what) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{count} x {what!r} not logged within {timeout_s}s; stderr:\n"
                         + log.read_text(errors="replace"))


def test_clients_leaving_mid_body_mid_stream_and_mid_wait_log_one_line_each(
        tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.enginesim", "--port", "0",
             "--served-model-name", "tiny", "--max-model-len", "8192", "--speed", "0.5"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), (url, log.read_text())

        # 1. The body is cut short: Starlette raises ClientDisconnect while reading it.
        body = _generation(stream=False)
        with _connect(url) as sock:
            sock.sendall(_head("/v1/completions", len(body) + 500) + body)
            time.sleep(0.2)
        _wait_for(log, 1, BODY_CUT)

        # 2. Mid-stream: the client reads the first chunks of an SSE answer, then leaves.
        body = _generation(stream=True)
        with _connect(url) as sock:
            sock.sendall(_head("/v1/completions", len(body)) + body)
            assert b"200 OK" in sock.recv(4096)
        _wait_for(log, 1, ABORTED)

        # 3. A whole (non-streamed) answer the client stops waiting for.
        body = _generation(stream=False)
        with _connect(url) as sock:
            sock.sendall(_head("/v1/completions", len(body)) + body)
            time.sleep(0.3)
        _wait_for(log, 2, ABORTED)

        reply = httpx.post(url + "/v1/completions", timeout=30,
                           json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "ClientDisconnect" not in text, text
    lines = text.splitlines()
    assert [line for line in lines if not LINE.match(line)] == [], text
    assert sum(BODY_CUT in line for line in lines) == 1, text
    assert sum(ABORTED in line and "Aborted request" in line for line in lines) == 2, text
