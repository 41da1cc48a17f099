"""A bad config file gives one line, whether at start (exit message) or at hot reload (log)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config, parse_config
from shared.config_watch import ConfigWatcher

REPO = Path(__file__).resolve().parents[2]
BAD_YAML = [
    "global:\n  interval: [1, 2\npools: {\n",  # PyYAML reports two positions
    "global:\n\tinterval: 1\n",  # a tab
    "pools:\n  - name: a\n   engine_type: vllm\n",  # bad indentation
]


@pytest.mark.parametrize("text", BAD_YAML)
def test_yaml_syntax_error_is_one_line_naming_the_position(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml")
    message = str(caught.value)
    assert "\n" not in message, message
    assert "c.yaml is not valid YAML" in message and "line " in message, message


def test_service_exits_with_a_one_line_message(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BAD_YAML[0])
    proc = subprocess.run([sys.executable, "-m", "services", "api", "--config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("llmsched: config error"), \
        proc.stderr
    assert "at line 2, column 13" in proc.stderr, proc.stderr


async def test_hot_reload_of_a_bad_file_logs_one_line(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.config")
    path = tmp_path / "config.yaml"
    path.write_text("global:\n  interval: 5\n")
    watcher = ConfigWatcher(load_config(path))
    path.write_text(BAD_YAML[0])
    assert await watcher.check() is False
    [record] = [r for r in caplog.records if r.name == "llmsched.config"]
    message = record.getMessage()
    assert record.levelno == logging.ERROR and "Config reload rejected" in message, message
    assert "\n" not in message, message
