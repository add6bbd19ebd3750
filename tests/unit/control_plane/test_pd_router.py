"""PD router flow over fake engines (httpx.MockTransport): hop order, bodies, retries, errors."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from sagellm.control_plane.pd_router import PDRouter, PDRouterConfig, prefill_body

P, D1, D2 = "http://prefill:1", "http://decode1:1", "http://decode2:1"


class FakeEngines:
    """Answers like LMDeploy's server; ``down`` hosts refuse connections, ``die`` hosts drop mid-answer."""

    def __init__(self, down=(), die=(), prefill_status=200, break_stream=False):
        self.calls: list[tuple[str, dict]] = []
        self.down, self.die, self.prefill_status = set(down), set(die), prefill_status
        self.break_stream = break_stream

    def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if request.url.path == "/health":
            if base in self.down:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"status": "ok"})
        body = json.loads(request.content)
        self.calls.append((base, body))
        if base in self.down:
            raise httpx.ConnectError("refused", request=request)
        if base in self.die:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body", request=request)
        if base == P:
            return httpx.Response(self.prefill_status, json={"output_ids": [7], "text": "x"} if self.prefill_status == 200 else {"error": "bad"})
        if body.get("stream"):
            async def events():
                for event in (b'data: {"text": "a"}\n\n', b'data: {"text": "b"}\n\n', b"data: [DONE]\n\n"):
                    if self.break_stream and event.startswith(b'data: {"text": "b"'):
                        raise httpx.ReadError("connection reset by peer")
                    yield event

            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())
        return httpx.Response(200, json={"output_ids": [7, 8, 9], "engine": base})


def client(engines: FakeEngines, decode=(D1, D2)) -> TestClient:
    router = PDRouter(PDRouterConfig(prefill=(P,), decode=decode), transport=httpx.MockTransport(engines))
    return TestClient(router.app)


def test_prefill_body_limits_tokens_and_disables_streaming():
    assert prefill_body("/generate", {"input_ids": [1], "max_tokens": 50, "stream": True, "stream_options": {}}) == {
        "input_ids": [1], "max_tokens": 1, "stream": False}
    assert prefill_body("/v1/chat/completions", {"messages": [], "max_completion_tokens": 9}) == {
        "messages": [], "max_completion_tokens": 1, "stream": False}
    assert prefill_body("/v1/completions", {"prompt": "p"}) == {"prompt": "p", "max_tokens": 1, "stream": False}


def test_prefill_then_decode_with_the_original_request():
    engines = FakeEngines()
    with client(engines) as c:
        response = c.post("/generate", json={"input_ids": [1, 2], "max_tokens": 3, "temperature": 0})
    assert response.status_code == 200 and response.json()["output_ids"] == [7, 8, 9]
    assert engines.calls == [
        (P, {"input_ids": [1, 2], "max_tokens": 1, "temperature": 0, "stream": False}),
        (D1, {"input_ids": [1, 2], "max_tokens": 3, "temperature": 0}),
    ]
    assert response.headers["x-sagellm-prefill-engine"] == P
    assert response.headers["x-sagellm-decode-engine"] == D1
    assert "x-sagellm-retried-from" not in response.headers


def test_streaming_is_relayed():
    with client(FakeEngines()) as c:
        response = c.post("/v1/completions", json={"prompt": "p", "max_tokens": 3, "stream": True})
    assert response.status_code == 200
    assert response.text == 'data: {"text": "a"}\n\ndata: {"text": "b"}\n\ndata: [DONE]\n\n'


def test_stream_broken_after_output_ends_with_an_error_event():
    with client(FakeEngines(break_stream=True)) as c:
        response = c.post("/v1/completions", json={"prompt": "p", "max_tokens": 3, "stream": True})
        state = c.get("/v1/sagellm/pd").json()
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[0] == '{"text": "a"}' and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_failed"
    assert state["decode"][0]["healthy"] is False and state["requests"] == {}


@pytest.mark.parametrize("fault", ["down", "die"])
def test_failed_decode_engine_is_replaced_by_the_next(fault):
    engines = FakeEngines(**{fault: [D1]})
    with client(engines) as c:
        response = c.post("/generate", json={"input_ids": [1], "max_tokens": 3})
        state = c.get("/v1/sagellm/pd").json()
    assert response.status_code == 200 and response.json()["engine"] == D2
    assert response.headers["x-sagellm-retried-from"] == D1
    assert [e["healthy"] for e in state["decode"]] == [False, True]
    assert state["requests"] == {}


def test_no_decode_engine_left_is_a_clean_503():
    engines = FakeEngines(die=[D1, D2])
    with client(engines) as c:
        response = c.post("/generate", json={"input_ids": [1], "max_tokens": 3})
        again = c.post("/generate", json={"input_ids": [1], "max_tokens": 3})
    assert response.status_code == 503
    assert response.json()["error"]["message"] == (
        f"no healthy decode engine could serve the request (tried: {D1}, {D2})")
    assert again.status_code == 503


def test_bad_request_answer_of_the_prefill_engine_is_returned_and_decode_not_called():
    engines = FakeEngines(prefill_status=400)
    with client(engines) as c:
        response = c.post("/generate", json={"input_ids": [1], "max_tokens": -1})
    assert response.status_code == 400
    assert [base for base, _ in engines.calls] == [P]


def test_unreachable_prefill_engine_leaves_the_whole_prompt_to_decode():
    engines = FakeEngines(down=[P])
    with client(engines) as c:
        response = c.post("/generate", json={"input_ids": [1], "max_tokens": 3})
    assert response.status_code == 200
    assert response.headers["x-sagellm-prefill-engine"] == "none"
    assert [base for base, _ in engines.calls] == [P, D1]


def test_invalid_json_is_a_400():
    with client(FakeEngines()) as c:
        response = c.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_config_needs_urls():
    with pytest.raises(ValueError, match="PDRouterConfig.decode"):
        PDRouterConfig(prefill=(P,), decode=())
    with pytest.raises(ValueError, match="PDRouterConfig.prefill"):
        PDRouterConfig(prefill=("prefill:1",), decode=(D1,))
