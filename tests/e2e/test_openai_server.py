"""The OpenAI-compatible server on the cpu device, driven by the official `openai` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.e2e.server import start_server

pytestmark = pytest.mark.slow

SESSION_LEN = 256
MODEL_NAME = "tiny"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(
        tiny_model_dir("llama"), log, "--session-len", str(SESSION_LEN), "--model-name", MODEL_NAME,
        "--block-size", "16",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=120, max_retries=0)


def post_raw(server, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.base_url}{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_served_name(client):
    assert [model.id for model in client.models.list().data] == [MODEL_NAME]


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert 1 <= reply.usage.completion_tokens <= 8


def test_chat_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": "the cat and the dog"}]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    chunks = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content


def test_completion_streaming_matches_non_streaming(client):
    whole = client.completions.create(model=MODEL_NAME, prompt="one two three", max_tokens=8, temperature=0)
    chunks = client.completions.create(
        model=MODEL_NAME, prompt="one two three", max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert whole.usage.completion_tokens == 8
    assert streamed == whole.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_session_is_rejected(client, stream):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        response = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "the cat " * SESSION_LEN}],
            max_tokens=8,
            stream=stream,
        )
        if stream:
            list(response)
    assert "session length" in str(err.value)
    assert "--session-len" in str(err.value)


@pytest.mark.parametrize("field, value", [("max_tokens", 0), ("max_tokens", -3), ("max_completion_tokens", 0)])
def test_non_positive_max_tokens_is_rejected(server, field, value):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], field: value}
    status, reply = post_raw(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400
    assert reply["error"]["message"] == f"{field} must be >= 1, got {value}"
    assert reply["error"]["param"] == field


def test_invalid_json_is_rejected(server):
    status, reply = post_raw(server, "/v1/completions", b'{"model": "tiny", "prompt": ')
    assert status == 400
    assert reply["error"]["message"].startswith("request body is not valid JSON")


def test_non_utf8_body_is_rejected(server):
    status, reply = post_raw(server, "/v1/completions", b'{"model": "tiny", "prompt": "caf\xe9", "max_tokens": 2}')
    assert status == 400
    assert "not valid UTF-8" in reply["error"]["message"]


def test_unknown_model_is_rejected(client):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert "no-such-model" in str(err.value)


def test_server_keeps_serving_after_bad_requests(server, client):
    post_raw(server, "/v1/completions", b"\xff\xfe")
    post_raw(server, "/v1/completions", b"[1, 2")
    reply = client.completions.create(model=MODEL_NAME, prompt="still there", max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4
