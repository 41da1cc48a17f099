"""Client errors shared by the HTTP services."""

from __future__ import annotations


class BadRequest(Exception):
    """A client error: ``field`` names what is wrong (None for the body as a whole)."""

    def __init__(self, field: str | None, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, object]:
        """The JSON error body: ``{"error": ..., "field": ...}``."""
        return {"error": self.message, "field": self.field}
