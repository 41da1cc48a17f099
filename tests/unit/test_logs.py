"""Logging: every logger, uvicorn's included, writes one line per event in the common format."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \[svc\] [\w.]+: ")

# Runs in a child: setup_logging changes the process's root logger.
SCRIPT = textwrap.dedent("""
    import asyncio, logging
    from shared.http_server import start_app
    from shared.logs import setup_logging

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async def main():
        server = await start_app(app)  # builds a uvicorn.Config after setup_logging
        logging.getLogger("uvicorn.error").warning("uvicorn.error speaks")
        logging.getLogger("uvicorn").warning("uvicorn speaks")
        logging.getLogger("llmsched.test").info("first line\\nsecond line")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("llmsched.test").exception("failed")
        await server.stop()

    setup_logging("svc", "INFO")
    asyncio.run(main())
""")


def test_uvicorn_and_own_loggers_share_one_format_one_line_per_event() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if not LINE.match(line)] == [], proc.stderr
    messages = [line.split(": ", 1)[1] for line in lines]
    assert messages == ["uvicorn.error speaks", "uvicorn speaks", "first line\\nsecond line",
                        messages[3]], proc.stderr
    assert messages[3].startswith("failed\\nTraceback (most recent call last):\\n"), messages[3]
    assert messages[3].endswith("ValueError: boom"), messages[3]
