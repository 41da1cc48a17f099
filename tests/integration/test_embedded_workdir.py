"""Embedded servers given a relative working directory (as a benchmark's --out gives them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.embedded import EmbeddedServer, nats_server, valkey_server


@pytest.mark.parametrize("start", [valkey_server, nats_server], ids=["valkey", "nats"])
def test_relative_workdir_is_taken_from_the_callers_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        start: Callable[..., EmbeddedServer]) -> None:
    # The server runs with its working directory as cwd: a relative path passed on as is
    # would name a directory inside itself (valkey: "FATAL CONFIG FILE ERROR ... dir").
    monkeypatch.chdir(tmp_path)
    os.makedirs("out/work", exist_ok=True)
    server = start(workdir="out/work").start()
    try:
        assert server.workdir == str(tmp_path / "out" / "work"), server.workdir
        logs = sorted(p.name for p in (tmp_path / "out" / "work").iterdir())
        assert any(name.endswith(".log") for name in logs), logs
    finally:
        server.stop()
