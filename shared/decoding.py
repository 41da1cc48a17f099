"""Decode JSON object bodies into msgspec structs, or a 400 that names the field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from shared.errors import BadRequest

T = TypeVar("T")
INVALID = "invalid_body"


_AT_FIELD = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_NAMED = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def error_field(err: msgspec.ValidationError) -> str | None:
    """The top-level key a msgspec validation error is about, if it names one."""
    text = str(err)
    match = _AT_FIELD.search(text) or _NAMED.search(text)
    return match.group(1) if match else None


def _fields(type_: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in msgspec.structs.fields(type_))


def decode_object(raw: bytes, type_: type[T], *, empty_ok: bool = False) -> tuple[T, list[str]]:
    """Decode a JSON object body into ``type_``; returns it and the keys it ignored."""
    if not raw.strip():
        if empty_ok:
            return msgspec.convert({}, type_), []
        raise BadRequest(None, "request body must be a JSON object", code=INVALID)
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise BadRequest(None, f"body is not valid JSON: {err}", code=INVALID) from None
    if not isinstance(data, dict):
        raise BadRequest(None, "request body must be a JSON object", code=INVALID)
    try:
        value = msgspec.convert(data, type_)
    except msgspec.ValidationError as err:
        raise BadRequest(error_field(err), str(err), code=INVALID) from None
    known = _fields(type_)
    return value, sorted(str(k) for k in data if k not in known)
