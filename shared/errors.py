"""Client errors and the one error body every llmsched HTTP API answers with (OpenAI's shape)."""

from __future__ import annotations

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable_error"}
"""``error.type`` by HTTP status; other 4xx are ``invalid_request_error``, 5xx ``server_error``."""

DEFAULT_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden",
                 404: "not_found", 405: "method_not_allowed", 409: "conflict",
                 413: "body_too_large", 422: "invalid_request", 429: "rate_limited",
                 500: "internal_error", 502: "upstream_error", 503: "unavailable"}
"""``error.code`` when the raiser names none."""


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong."""

    message: str
    type: str
    """invalid_request_error, authentication_error, not_found_error, conflict_error, ..."""
    param: str | None = None
    """The offending field or parameter, when one is to blame."""
    code: str | None = None
    """A short machine word (invalid_body, pool_not_found, unauthorized, ...)."""


class ErrorResponse(msgspec.Struct):
    """Every error answer of the API service and the worker."""

    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_type(status: int) -> str:
    """``error.type`` for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> bytes:
    """The JSON error body ``{"error": {"message", "type", "param", "code"}}``."""
    return _encode(ErrorResponse(ErrorDetail(message=message, type=error_type(status),
                                             param=param, code=code)))


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error answer in the one shape."""
    return Response(error_body(status, message, param, code), status, headers=headers,
                    media_type="application/json")


class BadRequest(Exception):
    """A client error: ``field`` names what is wrong (None for the body as a whole)."""

    def __init__(self, field: str | None, message: str, status: int = 400,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status
        self.code = code if code is not None else DEFAULT_CODES.get(status)

    def body(self) -> bytes:
        """This error's JSON body."""
        return error_body(self.status, self.message, self.field, self.code)

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """This error as an HTTP answer."""
        return error_response(self.status, self.message, self.field, self.code, headers)


def _validation_param(exc: RequestValidationError) -> str | None:
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query",
                                                                           "path", "header")]
        if loc:
            return ".".join(loc)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Route BadRequest, HTTPException (404/405/...), validation errors and crashes to the shape."""

    async def bad_request(_req: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return exc.response()

    async def http_error(req: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        if status == 404 and exc.detail == "Not Found":
            message = f"no route {req.url.path}"
        elif status == 405:
            message = f"method {req.method} not allowed on {req.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(status, message, None, DEFAULT_CODES.get(status), headers)

    async def invalid(_req: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        message = "; ".join(str(e.get("msg", "invalid")) for e in errors) or "invalid request"
        return error_response(422, message, _validation_param(exc), "invalid_request")

    async def crashed(_req: Request, _exc: Exception) -> Response:
        return error_response(500, "internal error; see the service log", None, "internal_error")

    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)
