"""`llmsched up` ports: a named port is used or refused; only the unnamed default moves."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shared.http_server import free_port
from tests.integration.up_process import UpProcess, get, wait_for_member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test process listens on for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def time_wait_port() -> int:
    """A port with a connection in TIME_WAIT on it and nothing listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side closing first keeps TIME_WAIT on (127.0.0.1, port)
        time.sleep(0.1)
        client.close()
    states = [line.split()[3] for table in ("/proc/net/tcp", "/proc/net/tcp6")
              for line in Path(table).read_text().splitlines()[1:]
              if int(line.split()[1].rsplit(":", 1)[1], 16) == port]
    assert "06" in states, f"no TIME_WAIT on port {port}: states {states}"  # 06: TIME_WAIT
    return port


def test_named_busy_port_fails_fast_naming_port_and_holder(tmp_path: Path,
                                                           held_port: int) -> None:
    with UpProcess(tmp_path / "run", "--api-port", str(held_port)) as up:
        code = up.wait_exit(60)
    assert code == 2, up.output
    assert f"port {held_port} (--api-port) is already in use by pid {os.getpid()}" in up.output
    assert "llmsched is up" not in up.output
    assert up.leftovers() == [], up.leftovers()


def test_port_named_in_config_file_is_not_moved(tmp_path: Path, held_port: int) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"global": {"api_port": held_port,
                                                 "api_host": "127.0.0.1"}}))
    with UpProcess(tmp_path / "run", "--config", str(config)) as up:
        code = up.wait_exit(60)
    assert code == 2, up.output
    assert f"port {held_port} (global.api_port in {config}) is already in use" in up.output


def test_named_port_in_time_wait_is_used(tmp_path: Path) -> None:
    port = time_wait_port()
    with UpProcess(tmp_path / "run", "--api-port", str(port)) as up:
        up.wait_up()
        assert up.api == f"http://127.0.0.1:{port}", up.output
        assert get(f"{up.api}/health")[0] == 200
        out = up.stop()
    assert up.returncode == 0, out


def test_busy_default_port_moves_and_says_so(tmp_path: Path, held_port: int) -> None:
    with UpProcess(tmp_path / "run", "--default-api-port", str(held_port)) as up:
        out = up.wait_up()
        api = up.api
        moved = int(api.rsplit(":", 1)[1])
        assert moved != held_port, out
        note = f"Port {held_port} (the default API port) is in use by pid {os.getpid()} ("
        assert note in out and f"the API listens on port {moved} instead" in out, out
        assert f"127.0.0.1:{held_port}" not in out, "a printed URL names the busy port"
        wait_for_member(api, up.select_body())
        deadline = time.monotonic() + 30
        while "demo-worker" not in get(f"{api}/admin/workers")[1]:
            assert time.monotonic() < deadline, "the worker did not register on the moved port"
            time.sleep(0.3)
        out = up.stop()
    assert up.returncode == 0, out


def test_busy_f5_port_of_a_kept_demo_config_fails_naming_it(tmp_path: Path,
                                                             held_port: int) -> None:
    config = tmp_path / "run" / "config.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"f5": {"host": "127.0.0.1", "port": held_port,
                                             "scheme": "http"}}))
    with UpProcess(tmp_path / "run", "--api-port", str(free_port())) as up:
        code = up.wait_exit(60)
    assert code == 2, up.output
    assert (f"port {held_port} (f5.port in {config}, the F5 emulator's) is already in use by "
            f"pid {os.getpid()}") in up.output
