"""`llmsched up` keeps the operator's edits to its demo config; --reset-config backs them up."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest
import yaml

from shared.http_server import free_port
from tests.integration.up_process import UpProcess, get, select, wait_for_member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

F5_AUTH = {"authorization": "Basic " + base64.b64encode(b"admin:demo-password").decode()}


def answers_fallback(api: str, body: dict[str, object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        seen = select(api, body)
        if seen == (200, "fallback"):
            return
        time.sleep(0.3)
    raise AssertionError(f"pool_fallback: true from the kept file not in force; last {seen}")


def test_edits_survive_the_next_run_and_reset_backs_them_up(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = run / "config.yaml"
    with UpProcess(run, "--api-port", str(free_port())) as up:
        out = up.wait_up()
        assert f"Config:             {config} (the demo config, written now" in out, out
        out = up.stop()
    assert up.returncode == 0, out

    new_f5 = free_port()
    original = config.read_text()
    edited = re.sub(r"(?m)^(  port: )\d+$", rf"\g<1>{new_f5}", original, count=1)
    edited = edited.replace("pool_fallback: false", "pool_fallback: true")
    edited = edited.replace("member_running_req_threshold: 20.0",
                            "member_running_req_threshold: 7.5  # mine")
    edited += "# operator note: keep this\n"
    assert yaml.safe_load(edited)["f5"]["port"] == new_f5, edited
    config.write_text(edited)

    with UpProcess(run, "--api-port", str(free_port())) as up:
        out = up.wait_up()
        assert f"Config:             {config} (kept from an earlier run" in out, out
        assert config.read_text() == edited, "the kept config was rewritten"
        assert f"F5 emulator:        http://127.0.0.1:{new_f5} " in out, out
        assert get(f"http://127.0.0.1:{new_f5}/mgmt/tm/ltm/pool", F5_AUTH)[0] == 200
        answers_fallback(up.api, up.select_body())
        out = up.stop()
    assert up.returncode == 0, out
    assert config.read_text() == edited

    with UpProcess(run, "--api-port", str(free_port()), "--reset-config") as up:
        out = up.wait_up()
        backup = Path(up.wait_for(r"the previous one is saved as (\S+)\)").group(1))
        assert backup.read_text() == edited
        fresh = config.read_text()
        assert "pool_fallback: false" in fresh and "operator note" not in fresh, fresh
        wait_for_member(up.api, up.select_body())
        out = up.stop()
    assert up.returncode == 0, out
