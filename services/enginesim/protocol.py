"""Parse and validate OpenAI requests the way vLLM does, with vLLM's error texts and statuses."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from services.enginesim.config import EngineConfig
from services.enginesim.openai_shapes import error_body
from services.enginesim.tokenizer import encode_chat, encode_prompt, pieces

Kind = Literal["chat", "completion"]


class ApiError(Exception):
    """An error answer: HTTP status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _flavour(cfg: EngineConfig) -> str:
    return "sglang" if cfg.engine == "sglang" else "vllm"


def _validation_error(cfg: EngineConfig, detail: str, loc: str) -> ApiError:
    message = "1 validation error:\n  {" + detail + "}"
    return ApiError(400, error_body(message, "Bad Request", loc, 400, _flavour(cfg)))


def _bad_request(cfg: EngineConfig, text: str, param: str | None, value: Any) -> ApiError:
    message = f"{text} (parameter={param}, value={value})" if param else text
    return ApiError(400, error_body(message, "BadRequestError", param, 400, _flavour(cfg)))


def not_found_model(cfg: EngineConfig, model: str) -> ApiError:
    """404 for a model name this engine does not serve."""
    message = f"The model `{model}` does not exist. Valid aliases: {', '.join(cfg.model_names)}."
    return ApiError(404, error_body(message, "NotFoundError", "model", 404, _flavour(cfg)))


def internal_error(cfg: EngineConfig, text: str = "Internal server error") -> ApiError:
    """500 in the engine's error shape (used by fault injection)."""
    return ApiError(500, error_body(text, "InternalServerError", None, 500, _flavour(cfg)))


def parse_json(cfg: EngineConfig, raw: bytes) -> dict[str, Any]:
    """Decode the body; errors read like FastAPI's json_invalid validation error."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        loc = f"body.{err.pos}"
        raise _validation_error(cfg, f"'type': 'json_invalid', 'loc': '{loc}', 'msg': 'JSON decode "
                                f"error', 'input': '<dict of 0 items>', 'ctx': {{'error': "
                                f"{err.msg!r}}}", loc) from None
    except UnicodeDecodeError:
        raise _validation_error(cfg, "'type': 'json_invalid', 'loc': 'body', 'msg': 'JSON decode "
                                "error', 'input': '<dict of 0 items>'", "body") from None
    if not isinstance(data, dict):
        raise _validation_error(cfg, "'type': 'model_attributes_type', 'loc': 'body', 'msg': "
                                "'Input should be a valid dictionary or object to extract fields "
                                f"from', 'input': {_input_repr(data)}", "body")
    return data


def _input_repr(value: Any) -> str:
    if isinstance(value, dict):
        return f"'<dict of {len(value)} items>'"
    if isinstance(value, list):
        return f"'<list of {len(value)} items>'"
    return repr(value)


_TYPES: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    "int": ("int_type", "int_parsing", "Input should be a valid integer"),
    "float": ("float_type", "float_parsing", "Input should be a valid number"),
    "bool": ("bool_type", "bool_parsing", "Input should be a valid boolean"),
})


def _field(cfg: EngineConfig, data: dict[str, Any], key: str, kind: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "dict": isinstance(value, dict),
          "list": isinstance(value, list), "str": isinstance(value, str)}[kind]
    if ok:
        return float(value) if kind == "float" else value
    loc = f"body.{key}"
    if kind in _TYPES:
        type_err, parse_err, msg = _TYPES[kind]
        err = parse_err if isinstance(value, str) else type_err
        text = msg + (", unable to parse string as an integer" if err == "int_parsing" else "")
    else:
        err = {"dict": "dict_type", "list": "list_type", "str": "string_type"}[kind]
        noun = {"dict": "dictionary", "list": "list", "str": "string"}[kind]
        text = f"Input should be a valid {noun}"
    raise _validation_error(cfg, f"'type': '{err}', 'loc': '{loc}', 'msg': '{text}', 'input': "
                            f"{_input_repr(value)}", loc)


@dataclass
class ParsedRequest:
    """What the engine needs from an OpenAI request."""

    kind: Kind
    model: str
    prompt_ids: list[int]
    max_tokens: int
    target: int
    stream: bool
    include_usage: bool
    n: int
    kv_transfer_params: dict[str, Any] | None


def tokenize_messages_error(cfg: EngineConfig, data: dict[str, Any]) -> ApiError:
    """400 for a /tokenize ``messages`` that is not a list (vLLM then also misses ``prompt``)."""
    message = ("2 validation errors:\n  {'type': 'missing', 'loc': 'body.prompt', 'msg': 'Field "
               f"required', 'input': '<dict of {len(data)} items>'}}\n  {{'type': 'list_type', "
               "'loc': 'body.messages', 'msg': 'Input should be a valid list', 'input': "
               f"{_input_repr(data.get('messages'))}}}")
    return ApiError(400, error_body(message, "Bad Request", "body.prompt", 400, _flavour(cfg)))


def _missing(cfg: EngineConfig, data: dict[str, Any], key: str) -> ApiError:
    loc = f"body.{key}"
    return _validation_error(cfg, f"'type': 'missing', 'loc': '{loc}', 'msg': 'Field required', "
                             f"'input': '<dict of {len(data)} items>'", loc)


def _prompt_ids(cfg: EngineConfig, kind: Kind, data: dict[str, Any]) -> list[int]:
    if kind == "chat":
        messages = _field(cfg, data, "messages", "list")
        if messages is None:
            raise _missing(cfg, data, "messages")
        return encode_chat([m for m in messages if isinstance(m, dict)])
    prompt = data.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise _bad_request(cfg, "Either prompt or prompt_embeds must be provided and non-empty.",
                           None, None)
    if isinstance(prompt, list):
        first = prompt[0]
        if isinstance(first, int):
            return [int(t) for t in prompt]
        if isinstance(first, list):
            return [int(t) for t in first]
        prompt = str(first)
    return encode_prompt(str(prompt))


def parse_request(cfg: EngineConfig, kind: Kind, data: dict[str, Any]) -> ParsedRequest:
    """Validate in vLLM's order: schema, model, sampling parameters, prompt length."""
    prompt_ids = _prompt_ids(cfg, kind, data)
    max_tokens = _field(cfg, data, "max_tokens", "int")
    if kind == "chat" and max_tokens is None:
        max_tokens = _field(cfg, data, "max_completion_tokens", "int")
    if kind == "completion" and "max_tokens" not in data:
        max_tokens = 16
    temperature = _field(cfg, data, "temperature", "float")
    top_p = _field(cfg, data, "top_p", "float")
    n = _field(cfg, data, "n", "int")
    stream = bool(_field(cfg, data, "stream", "bool"))
    options = _field(cfg, data, "stream_options", "dict") or {}
    kv_params = _field(cfg, data, "kv_transfer_params", "dict")
    model = _field(cfg, data, "model", "str")
    if model is None:
        model = cfg.model_names[0]
    elif model not in cfg.model_names:
        raise not_found_model(cfg, model)
    if temperature is not None and temperature < 0:
        raise _bad_request(cfg, f"temperature must be non-negative, got {temperature}.",
                           "temperature", temperature)
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad_request(cfg, f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if n is not None and n < 1:
        raise _bad_request(cfg, f"n must be at least 1, got {n}.", "n", n)
    if max_tokens is not None and max_tokens < 1:
        raise _bad_request(cfg, f"max_tokens must be at least 1, got {max_tokens}.",
                           "max_tokens", max_tokens)
    limit = cfg.max_model_len
    if max_tokens is not None and max_tokens > limit:
        raise _bad_request(cfg, f"max_tokens={max_tokens} cannot be greater than "
                           f"max_model_len={limit}. Please request fewer output tokens.",
                           "max_tokens", max_tokens)
    prompt_len = len(prompt_ids)
    if prompt_len > limit:
        shown = min(prompt_len, limit + 1)
        raise _bad_request(cfg, f"This model's maximum context length is {limit} tokens. However, "
                           f"your prompt contains at least {shown} input tokens, which exceeds "
                           "this limit even without any output tokens. Please reduce the length "
                           "of the input prompt.", "input_tokens", shown)
    room = max(1, limit - prompt_len)
    natural = _natural_length(cfg, prompt_ids)
    if max_tokens is None:
        max_tokens = room
        target = min(natural, room)
    else:
        max_tokens = min(max_tokens, room)
        target = min(natural, max_tokens) if cfg.fake_response is not None else max_tokens
    return ParsedRequest(kind=kind, model=model, prompt_ids=prompt_ids, max_tokens=max_tokens,
                         target=target, stream=stream,
                         include_usage=bool(options.get("include_usage")), n=n or 1,
                         kv_transfer_params=kv_params)


def _natural_length(cfg: EngineConfig, prompt_ids: list[int]) -> int:
    """Where the 'model' would stop by itself: the fake response, or a seeded length."""
    if cfg.fake_response is not None:
        return max(1, len(pieces(cfg.fake_response)))
    rng = random.Random(hash((cfg.seed, len(prompt_ids), *prompt_ids[-8:])))
    mean = cfg.default_output_tokens
    return max(1, int(rng.uniform(0.5 * mean, 1.5 * mean)))
