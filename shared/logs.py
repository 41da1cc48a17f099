"""Logging set-up: one format for every logger, one line per event."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [%(service)s] %(name)s: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
"""uvicorn's own loggers; with ``log_config=None`` they reach the root handler below."""


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


class OneLineFormatter(logging.Formatter):
    """:data:`FORMAT`, with newlines in messages and tracebacks escaped as ``\\n``."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records (uvicorn's included) to stderr, one line each, tagged."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(_ServiceFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    set_level(level)
    for name in UVICORN_LOGGERS:
        # A uvicorn.Config made before this, without log_config=None, installed its own.
        own = logging.getLogger(name)
        for old in list(own.handlers):
            own.removeHandler(old)
        own.propagate = True
    for noisy in ("httpx", "httpcore", "uvicorn.access", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def set_level(level: str) -> None:
    """Change llmsched's own level at run time (hot reload); library loggers keep theirs."""
    logging.getLogger("llmsched").setLevel(level.upper())
