"""A service whose tasks will not end still exits after SIGTERM, saying so (exit 1); one
whose tasks end exits 0. Each runs ``run_service`` in its own process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "fixtures" / "config" / "seed_full_example.yaml"

SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, sys
    from shared.config import load_config
    from shared.runtime import run_service

    STUBBORN = sys.argv[2] == "stubborn"

    async def loop_forever() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not STUBBORN:
                    raise

    async def serve(loaded, stop) -> None:
        asyncio.get_running_loop().create_task(loop_forever(), name="left behind")
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        await stop.wait()

    sys.exit(run_service("probe", load_config(sys.argv[1]), serve, stop_timeout_s=1.0))
""")


@pytest.mark.parametrize(("kind", "code"), [("stubborn", 1), ("polite", 0)])
def test_a_service_exits_after_sigterm_whatever_its_tasks_do(kind: str, code: int) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(CONFIG), kind], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}:\n{out}"
    if kind == "stubborn":
        assert "still running 1s after being cancelled: left behind" in out, out
        assert "task(s) would not end; exiting without them" in out, out
    else:
        assert "probe stopped" in out and "would not end" not in out, out
