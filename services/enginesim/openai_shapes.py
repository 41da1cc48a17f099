"""OpenAI-compatible bodies, chunks and errors, key for key as vLLM 0.32.0 writes them."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"
SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, keys in insertion order."""
    return _encoder.encode(obj)


def sse(obj: Any) -> bytes:
    """One server-sent event."""
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, details: bool = True) -> dict[str, Any]:
    """The usage object (streamed usage has no *_details keys)."""
    body: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                            "completion_tokens": completion_tokens}
    if details:
        body["prompt_tokens_details"] = None
        body["completion_tokens_details"] = None
    return body


def chat_response(*, rid: str, created: int, model: str, content: str, finish_reason: str,
                  prompt_tokens: int, completion_tokens: int, fingerprint: str | None,
                  kv_transfer_params: dict[str, Any] | None) -> dict[str, Any]:
    """A non-streamed chat.completion."""
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
               "audio": None, "function_call": None, "reasoning": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None, "routed_experts": None}
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "service_tier": None, "system_fingerprint": fingerprint,
            "usage": usage(prompt_tokens, completion_tokens), "prompt_logprobs": None,
            "prompt_token_ids": None, "prompt_text": None,
            "kv_transfer_params": kv_transfer_params, "ec_transfer_params": None, "metrics": None}


def completion_response(*, rid: str, created: int, model: str, text: str, finish_reason: str,
                        prompt_tokens: int, completion_tokens: int, fingerprint: str | None,
                        kv_transfer_params: dict[str, Any] | None) -> dict[str, Any]:
    """A non-streamed text_completion."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None, "prompt_logprobs": None,
              "prompt_token_ids": None, "routed_experts": None}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "service_tier": None, "system_fingerprint": fingerprint,
            "usage": usage(prompt_tokens, completion_tokens),
            "kv_transfer_params": kv_transfer_params, "ec_transfer_params": None, "metrics": None}


def chat_role_chunk(rid: str, created: int, model: str) -> bytes:
    """The first chat chunk: the assistant role with empty content."""
    choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
              "finish_reason": None}
    return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice], "prompt_token_ids": None, "prompt_text": None})


def chat_chunk(rid: str, created: int, model: str, text: str, finish_reason: str | None) -> bytes:
    """A chat content chunk; the last one carries finish_reason and stop_reason."""
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                              "finish_reason": finish_reason}
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice]})


def completion_chunk(rid: str, created: int, model: str, text: str,
                     finish_reason: str | None) -> bytes:
    """A text_completion chunk."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
              "stop_reason": None, "token_ids": None}
    return sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [choice]})


def usage_chunk(rid: str, obj: str, created: int, model: str, prompt_tokens: int,
                completion_tokens: int, fingerprint: str | None) -> bytes:
    """The final usage chunk (``choices: []``) sent when stream_options.include_usage is set."""
    return sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                "usage": usage(prompt_tokens, completion_tokens, details=False),
                "system_fingerprint": fingerprint})


def models_list(names: tuple[str, ...], root: str, max_model_len: int, created: int,
                owned_by: str, perm_ids: list[str]) -> dict[str, Any]:
    """GET /v1/models."""
    data = []
    for name, perm_id in zip(names, perm_ids, strict=True):
        permission = {"id": perm_id, "object": "model_permission", "created": created,
                      "allow_create_engine": False, "allow_sampling": True,
                      "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                      "allow_fine_tuning": False, "organization": "*", "group": None,
                      "is_blocking": False}
        data.append({"id": name, "object": "model", "created": created, "owned_by": owned_by,
                     "root": root, "parent": None, "max_model_len": max_model_len,
                     "permission": [permission]})
    return {"object": "list", "data": data}


def error_body(message: str, err_type: str, param: str | None, code: int,
               flavour: str = "vllm") -> dict[str, Any]:
    """vLLM's ``{"error": {...}}``, or SGLang's flat ``{"object": "error", ...}``."""
    if flavour == "sglang":
        return {"object": "error", "message": message, "type": err_type, "param": param,
                "code": code}
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}
