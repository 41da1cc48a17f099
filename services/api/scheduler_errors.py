"""What a call to the scheduler's NATS endpoints can fail with."""

from __future__ import annotations


class SchedulerUnavailable(Exception):
    """No scheduler answered in time (bus down, no replica, or overloaded)."""


class SchedulerError(Exception):
    """The scheduler rejected the request; ``code`` is an HTTP-like status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
