"""The OpenAI routes in /docs and /openapi.json (served by GatewayFront, never by FastAPI)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from shared.errors import error_response
from shared.openapi import body, errors

_CHAT: dict[str, Any] = {
    "type": "object", "required": ["model", "messages"],
    "description": "An OpenAI chat completions request; `model` is a model alias. Fields "
                   "other than the ones named here go to the engine unchanged.",
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
        "max_tokens": {"type": "integer", "minimum": 1},
    },
}
_COMPLETIONS: dict[str, Any] = {
    "type": "object", "required": ["model", "prompt"],
    "description": "An OpenAI completions request; `model` is a model alias.",
    "properties": {"model": {"type": "string"},
                   "prompt": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                   "stream": {"type": "boolean"},
                   "max_tokens": {"type": "integer", "minimum": 1}},
}
_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "The engine's answer, relayed unchanged (a JSON object, or "
                         "Server-Sent Events with `stream: true`)",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": {"type": "string"}}}},
    **errors(400, 401, 404, 413, 429, 502, 503,
             e404="Unknown model (`code: model_not_found`)",
             e429="This API process is at max_ongoing_requests, or the pool's admission "
                  "line is full (`Retry-After`)",
             e502="No engine answered before its first byte, after the retries",
             e503="Nothing can take the request now (`Retry-After`)"),
}
_MODELS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every model alias, in OpenAI's list shape",
          "content": {"application/json": {"schema": {
              "type": "object", "required": ["object", "data"],
              "properties": {"object": {"const": "list"},
                             "data": {"type": "array", "items": {"type": "object"}}}}}}},
    **errors(401),
}


def _front_only() -> Response:
    return error_response(500, "served by the gateway front; this route is documentation")


def gateway_docs_router() -> APIRouter:
    """Routes that only document the gateway (requests never reach them)."""
    router = APIRouter(tags=["openai"])

    @router.post("/v1/chat/completions", summary="Chat completions through the gateway",
                 openapi_extra=body(_CHAT), responses=_ANSWER, response_class=Response)
    async def chat() -> Response:
        return _front_only()

    @router.post("/v1/completions", summary="Completions through the gateway",
                 openapi_extra=body(_COMPLETIONS), responses=_ANSWER, response_class=Response)
    async def completions() -> Response:
        return _front_only()

    @router.get("/v1/models", summary="The model aliases the gateway serves",
                responses=_MODELS, response_class=Response)
    async def models() -> Response:
        return _front_only()

    return router
