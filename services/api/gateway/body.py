"""OpenAI request bodies: the few fields the gateway needs, checked; the rest is the engine's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

Kind = Literal["chat", "completions"]

MAX_BODY_BYTES = 32 << 20
"""Largest request body accepted (long prompts and images as data URLs fit)."""
BODY_IDLE_S = 10.0
"""A client that sends no byte of its announced body for this long gets 408 (select and
gateway routes): a slow client is served, a silent one does not hold a connection for ever."""

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    """A request the gateway answers itself, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, retry_after: float | None = None,
                 allow: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RouteFields:
    """What a cache-aware pool's route call carries besides the prompt length."""

    prefix_hashes: list[int] = field(default_factory=list)
    token_keys: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    session: str = ""


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """A validated chat or completions request."""

    kind: Kind
    model: str
    stream: bool
    include_usage: bool
    prompt_chars: int
    body: dict[str, Any]
    raw: bytes
    route: RouteFields | None = None
    """Prefix blocks and session of a request to a cache-aware pool (route_keys.py)."""

    def for_engine(self, served_model: str | None) -> bytes:
        """The body to send upstream: unchanged unless the engine serves another model name."""
        if served_model is None or served_model == self.model:
            return self.raw
        return _encode({**self.body, "model": served_model})


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_request")


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.get("text", "")) for part in content
                   if isinstance(part, dict) and isinstance(part.get("text", ""), str))
    return 0


def parse_request(raw: bytes, kind: Kind) -> GatewayRequest:
    """Decode and check ``raw``; raises GatewayError(400) naming the offending field."""
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayError(413, f"request body larger than {MAX_BODY_BYTES} bytes",
                           code="body_too_large")
    if not raw.strip():
        raise _bad("request body is empty; expected a JSON object")
    try:
        body = _decode(raw)
    except msgspec.DecodeError as err:
        raise _bad(f"request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("`model` is required and must be a non-empty string", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("`stream_options` must be an object", "stream_options")
    include_usage = bool(stream and options and options.get("include_usage") is True)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise _bad(f"`{name}` must be an integer >= 1", name)
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("`messages` is required and must be a non-empty array", "messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _bad(f"`messages[{i}]` must be an object with a string `role`",
                           f"messages[{i}]")
        prompt_chars = sum(_text_len(m.get("content")) for m in messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt_chars = len(prompt)
        elif isinstance(prompt, list) and prompt:
            prompt_chars = sum(len(p) if isinstance(p, str | list) else 0 for p in prompt)
        else:
            raise _bad("`prompt` is required: a string or a non-empty array", "prompt")
    return GatewayRequest(kind=kind, model=model, stream=stream, include_usage=include_usage,
                          prompt_chars=prompt_chars, body=body, raw=raw)
