"""OpenAPI fragments for routes that decode with msgspec: bodies, replies and the error answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from fastapi import APIRouter, FastAPI, Response

from shared.errors import ErrorResponse

REF = "#/components/schemas/{name}"
ERROR_TEXT = {
    400: "Bad request: `error.param` names the field or parameter",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`)",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid request",
    500: "Internal failure",
    502: "The engine refused or failed",
    503: "Unavailable for now; retry after `Retry-After` seconds",
}

Responses = dict[int | str, dict[str, Any]]
Handler = Callable[..., Awaitable[Any]]


def ref(type_: type[Any]) -> dict[str, str]:
    """A ``$ref`` to ``type_``'s schema (added to the document by :func:`install_schemas`)."""
    return {"$ref": REF.format(name=type_.__name__)}


def errors(*statuses: int, **text: str) -> Responses:
    """Error responses in the one error shape; ``text`` overrides by ``e<status>=...``."""
    return {status: {"description": text.get(f"e{status}", ERROR_TEXT.get(status, "Error")),
                     "content": {"application/json": {"schema": ref(ErrorResponse)}}}
            for status in statuses}


def reply(type_: type[Any] | dict[str, Any], description: str = "OK", status: int = 200
          ) -> Responses:
    """A JSON success response whose body is ``type_`` (a msgspec struct or a raw schema)."""
    schema = type_ if isinstance(type_, dict) else ref(type_)
    return {status: {"description": description,
                     "content": {"application/json": {"schema": schema}}}}


def body(type_: type[Any] | dict[str, Any], *, required: bool = True,
         example: Any = None) -> dict[str, Any]:
    """``openapi_extra`` for a JSON request body of ``type_`` (decoded by hand, not FastAPI)."""
    schema = type_ if isinstance(type_, dict) else ref(type_)
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": required, "content": {"application/json": media}}}


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` for one query parameter read from ``request.query_params``."""
    return {"parameters": [{"name": name, "in": "query", "required": False,
                            "description": description, "schema": schema}]}


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Several ``openapi_extra`` fragments as one."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, []) + value if isinstance(value, list) else value
    return out


def probe(router: APIRouter | FastAPI, path: str, responses: Responses, summary: str
          ) -> Callable[[Handler], Handler]:
    """Register a health probe for GET and HEAD (load-balancer monitors): same status, no body."""
    head = {status: {"description": r["description"]} for status, r in responses.items()}

    def register(handler: Handler) -> Handler:
        router.get(path, responses=responses, summary=summary)(handler)
        router.head(path, responses=head, summary=f"{summary} (HEAD: no body)",
                    response_class=Response, operation_id=f"{handler.__name__}_head")(handler)
        return handler

    return register


def _schema_refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        target = node.get("$ref")
        if isinstance(target, str):
            yield target.rsplit("/", 1)[-1]
        for value in node.values():
            yield from _schema_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_refs(value)


def install_schemas(app: FastAPI, types: Iterable[type[Any]]) -> None:
    """Make ``app.openapi()`` carry ``types``' msgspec schemas and the error schema.

    FastAPI documents a 422 (pydantic's ``HTTPValidationError``) for every route with a path
    parameter; these routes take plain strings and validate bodies themselves (400), so
    that 422 cannot happen and is dropped.
    """
    wanted = [ErrorResponse, *types]
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        _, components = msgspec.json.schema_components(wanted, ref_template=REF)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(components)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                answers = operation.get("responses", {})
                if "HTTPValidationError" in set(_schema_refs(answers.get("422", {}))):
                    del answers["422"]
        used = set(_schema_refs(doc["paths"])) | set(_schema_refs(components))
        for name in ("HTTPValidationError", "ValidationError"):
            if name not in used:
                schemas.pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
