"""The one error body: its shape and the type each HTTP status maps to."""

from __future__ import annotations

import msgspec
import pytest

from shared.errors import BadRequest, error_body, error_type


@pytest.mark.parametrize(("status", "type_"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (409, "conflict_error"),
    (413, "invalid_request_error"), (422, "invalid_request_error"), (429, "rate_limit_error"),
    (503, "service_unavailable_error"), (500, "server_error"), (502, "server_error"),
    (418, "invalid_request_error"),
])
def test_type_follows_the_status(status: int, type_: str) -> None:
    assert error_type(status) == type_


def test_body_has_every_key_even_when_empty() -> None:
    assert msgspec.json.decode(error_body(404, "gone")) == {
        "error": {"message": "gone", "type": "not_found_error", "param": None, "code": None}}


def test_bad_request_names_param_and_defaults_its_code() -> None:
    assert msgspec.json.decode(BadRequest("members", "too many").body()) == {
        "error": {"message": "too many", "type": "invalid_request_error", "param": "members",
                  "code": "invalid_request"}}
    assert BadRequest(None, "x", 409, "instance_exists").code == "instance_exists"
