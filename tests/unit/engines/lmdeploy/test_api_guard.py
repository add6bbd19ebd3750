"""Request-body checks of the API guard (pure function; the server path is covered in tests/e2e)."""

from __future__ import annotations

import json

import pytest

from sagellm.engines.lmdeploy.api_guard import error_body, length_error_message, validate_body


def test_valid_body_passes():
    assert validate_body(json.dumps({"model": "m", "max_tokens": 4}).encode()) is None


def test_non_utf8_names_offset_and_byte():
    assert validate_body(b'{"p": "\xff"}') == (
        "request body is not valid UTF-8 (invalid byte 0xff at offset 7); send JSON encoded as UTF-8",
        None,
    )


def test_invalid_json_names_position():
    assert validate_body(b'{"model": ') == ("request body is not valid JSON: Expecting value at line 1 column 11", None)


def test_non_object_json():
    assert validate_body(b"[1]") == ("request body must be a JSON object, got list", None)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_tokens", 0, "max_tokens must be >= 1, got 0"),
        ("max_completion_tokens", -2, "max_completion_tokens must be >= 1, got -2"),
        ("max_tokens", "8", "max_tokens must be a positive integer, got '8'"),
        ("max_tokens", True, "max_tokens must be a positive integer, got True"),
    ],
)
def test_bad_token_limits(field, value, message):
    assert validate_body(json.dumps({field: value}).encode()) == (message, field)


def test_length_error_message_uses_usage_and_session_len():
    chunk = json.dumps({"usage": {"prompt_tokens": 300}}).encode()
    assert length_error_message(chunk, 256) == (
        "the prompt (300 tokens) does not fit in the session length of 256 tokens; "
        "shorten the prompt or restart the engine with a larger --session-len"
    )


def test_error_body_shape():
    assert json.loads(error_body("bad", 400, "max_tokens")) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": 400}
    }
