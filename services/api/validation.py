"""Turn request bodies into typed requests, or a 400 that names the field."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec

from shared.errors import BadRequest
from shared.members import MemberAddressError, parse_member_key
from shared.messages import SelectRequest
from shared.routing import TtftAt

MAX_MEMBERS = 10_000
MAX_PREFIX_HASHES = 1024
MAX_KEY_CHARS = 1024
MAX_BODY_BYTES = 1 << 20
INVALID = "invalid_body"

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"missing required field `([^`]+)`")

MAX_OUTCOME_BYTES = 1 << 16
"""An outcome report is a few hundred bytes; anything this large is not one."""
MAX_REPORTED_MS = 86_400_000.0
"""A reported duration past a day is a broken clock, not a request."""

SELECT_SHAPE = "{pool_name, partition, members}"
OUTCOME_SHAPE = "{pool_name, partition, member, status, ttft_ms}"

Millis = Annotated[float, msgspec.Meta(ge=0, le=MAX_REPORTED_MS)]


class OutcomeReport(msgspec.Struct, kw_only=True):
    """How one request the F5 sent to a member ended (``POST /scheduler/outcome``)."""

    pool_name: Annotated[str, msgspec.Meta(min_length=1)]
    partition: Annotated[str, msgspec.Meta(min_length=1)] = "Common"
    member: Annotated[str, msgspec.Meta(
        min_length=1, description="The member key select answered: `ip:port`, `[v6]:port`")]
    status: Annotated[int, msgspec.Meta(
        ge=0, le=599, description="HTTP status the engine answered; 0 when it answered"
        " nothing (refused, reset, timed out)")]
    ttft_ms: Annotated[Millis | None, msgspec.Meta(
        description="Milliseconds from sending the request to the member to what `ttft_at`"
        " names")] = None
    ttft_at: Annotated[TtftAt, msgspec.Meta(
        description="What `ttft_ms` measured: `headers` (the response headers, what the"
        " shipped iRule sees; a streaming engine sends them before its first token) or"
        " `first_token`. Only `first_token` reports teach the TTFT predictor")] = "headers"
    e2e_ms: Annotated[Millis | None, msgspec.Meta(
        description="Milliseconds from sending the request to the end of the response")] = None


_select_decoder = msgspec.json.Decoder(SelectRequest)
_outcome_decoder = msgspec.json.Decoder(OutcomeReport)


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes, limit: int, shape: str) -> T:
    """``raw`` as the decoder's type, or a BadRequest naming the field at fault."""
    if len(raw) > limit:
        raise BadRequest(None, f"body larger than {limit} bytes", 413, "body_too_large")
    if not raw.strip():
        raise BadRequest(None, f"body is empty; expected JSON {shape}", code=INVALID)
    try:
        return decoder.decode(raw)
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
            message = f"body must be a JSON object {shape}"
        raise BadRequest(field, message, code=INVALID) from None
    except msgspec.DecodeError as err:
        raise BadRequest(None, f"body is not valid JSON: {err}", code=INVALID) from None


def decode_select(raw: bytes) -> SelectRequest:
    """Validate a select body (pool_name, partition, members)."""
    body = _decode(_select_decoder, raw, MAX_BODY_BYTES, SELECT_SHAPE)
    if not body.pool_name:
        raise BadRequest("pool_name", "pool_name must not be empty", code=INVALID)
    if not body.partition:
        raise BadRequest("partition", "partition must not be empty", code=INVALID)
    if len(body.members) > MAX_MEMBERS:
        raise BadRequest("members", f"at most {MAX_MEMBERS} members per request",
                         code=INVALID)
    if len(body.prefix_hashes) > MAX_PREFIX_HASHES:
        raise BadRequest("prefix_hashes", f"at most {MAX_PREFIX_HASHES} prefix hashes",
                         code=INVALID)
    if any(not 0 <= h < 1 << 63 for h in body.prefix_hashes):
        raise BadRequest("prefix_hashes", "prefix hashes must be integers 0..2^63-1",
                         code=INVALID)
    for name, value in (("prefix_key", body.prefix_key), ("session", body.session)):
        if value is not None and len(value) > MAX_KEY_CHARS:
            raise BadRequest(name, f"{name} must be at most {MAX_KEY_CHARS} characters",
                             code=INVALID)
    return body


def decode_outcome(raw: bytes) -> OutcomeReport:
    """Validate an outcome report (the member must be a member key, the status 0 or HTTP)."""
    body = _decode(_outcome_decoder, raw, MAX_OUTCOME_BYTES, OUTCOME_SHAPE)
    try:
        parse_member_key(body.member)
    except MemberAddressError as err:
        raise BadRequest("member", str(err), code=INVALID) from None
    if 0 < body.status < 100:
        raise BadRequest("status", f"status must be 0 (no answer) or an HTTP status 100..599,"
                         f" got {body.status}", code=INVALID)
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
