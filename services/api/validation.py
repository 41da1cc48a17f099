"""Turn request bodies into typed requests, or a 400 that names the field."""

from __future__ import annotations

import re

import msgspec

from shared.errors import BadRequest
from shared.messages import SelectRequest

MAX_MEMBERS = 10_000
MAX_BODY_BYTES = 1 << 20
INVALID = "invalid_body"

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")


_select_decoder = msgspec.json.Decoder(SelectRequest)


def decode_select(raw: bytes) -> SelectRequest:
    """Validate a select body (pool_name, partition, members)."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(None, f"body larger than {MAX_BODY_BYTES} bytes", 413,
                         "body_too_large")
    if not raw.strip():
        raise BadRequest(None, "body is empty; expected JSON {pool_name, partition, members}",
                         code=INVALID)
    try:
        body = _select_decoder.decode(raw)
    except msgspec.ValidationError as err:
        text = str(err)
        missing = _MISSING.search(text)
        if missing:
            raise BadRequest(missing.group(1), f"missing required field `{missing.group(1)}`",
                             code=INVALID) from None
        at = _AT.search(text)
        field = at.group(1) if at else None
        message = _AT.sub("", text)
        if field:
            message = f"{field}: {message}"
        elif text.startswith("Expected `object`"):
            message = "body must be a JSON object {pool_name, partition, members}"
        raise BadRequest(field, message, code=INVALID) from None
    except msgspec.DecodeError as err:
        raise BadRequest(None, f"body is not valid JSON: {err}", code=INVALID) from None
    if not body.pool_name:
        raise BadRequest("pool_name", "pool_name must not be empty", code=INVALID)
    if not body.partition:
        raise BadRequest("partition", "partition must not be empty", code=INVALID)
    if len(body.members) > MAX_MEMBERS:
        raise BadRequest("members", f"at most {MAX_MEMBERS} members per request",
                         code=INVALID)
    return body


def check_iterations(value: str | None, default: int, maximum: int) -> int:
    """Parse the ``iterations`` query parameter within 1..maximum."""
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadRequest("iterations", f"iterations must be an integer, got {value!r}",
                         code="invalid_parameter") from None
    if not 1 <= n <= maximum:
        raise BadRequest("iterations", f"iterations must be between 1 and {maximum}, got {n}",
                         code="invalid_parameter")
    return n
