"""The admin key: who may register workers and models and see the admin API."""

from __future__ import annotations

import hmac
import os

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import error_response

ADMIN_KEY_ENV = "LLMSCHED_ADMIN_KEY"
"""Environment variable holding the admin key; unset: admin routes are open."""


def admin_key_from_env() -> str | None:
    """The configured admin key, or None."""
    return os.environ.get(ADMIN_KEY_ENV) or None


def bearer(key: str | None) -> dict[str, str]:
    """Headers an internal caller sends (empty when no key is set)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


class AdminAuth:
    """Checks ``Authorization: Bearer <key>`` when a key is set."""

    def __init__(self, key: str | None) -> None:
        self.key = key

    @classmethod
    def from_env(cls) -> AdminAuth:
        return cls(admin_key_from_env())

    def allows(self, authorization: str) -> bool:
        """True when no key is set or ``authorization`` carries it."""
        if not self.key:
            return True
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self.key.encode())

    def denied(self, request: Request) -> Response | None:
        """A 401 answer for a request without the key, else None."""
        if self.allows(request.headers.get("authorization", "")):
            return None
        return error_response(401, "missing or wrong API key (Authorization: Bearer <key>)",
                              None, "unauthorized", {"WWW-Authenticate": "Bearer"})
