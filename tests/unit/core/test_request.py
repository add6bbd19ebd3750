import pytest

from sagellm.core.request import RequestMetadata


def test_defaults():
    r = RequestMetadata("r1", arrival_time=10)
    assert r.priority == 0 and r.tenant is None and not r.has_slo
    assert r.arrival_time == 10.0 and isinstance(r.arrival_time, float)


def test_from_body():
    r = RequestMetadata.from_openai_extras(
        {"model": "m", "priority": -2, "user": "acme", "slo_ttft_ms": 500, "slo_tpot_ms": 50.5},
        {}, request_id="r1", arrival_time=5.0,
    )
    assert r == RequestMetadata("r1", priority=-2, tenant="acme", slo_ttft_ms=500.0, slo_tpot_ms=50.5, arrival_time=5.0)
    assert r.has_slo


def test_headers_override_body_case_insensitively():
    r = RequestMetadata.from_openai_extras(
        {"priority": 5, "user": "client-claims"},
        {"X-SageLLM-Priority": " 1 ", "x-sagellm-tenant": "gw-tenant", "X-SAGELLM-SLO-TTFT-MS": "250",
         "x-sagellm-slo-tpot-ms": "20.5", "X-Request-Id": "abc"},
        arrival_time=1.0,
    )
    assert r == RequestMetadata("abc", priority=1, tenant="gw-tenant", slo_ttft_ms=250.0, slo_tpot_ms=20.5, arrival_time=1.0)


def test_generated_request_id_and_null_body_fields():
    r = RequestMetadata.from_openai_extras({"priority": None, "user": None}, {})
    assert r.request_id.startswith("req-") and len(r.request_id) == 36
    assert r.priority == 0 and r.tenant is None


@pytest.mark.parametrize("body,headers,message", [
    ({"priority": "high"}, {}, "body field 'priority': got 'high'; accepted: an integer (lower is served first)"),
    ({"priority": True}, {}, "body field 'priority': got True; accepted: an integer (lower is served first)"),
    ({"priority": 1.5}, {}, "body field 'priority': got 1.5; accepted: an integer (lower is served first)"),
    ({}, {"x-sagellm-priority": "1.0"}, "header 'x-sagellm-priority': got '1.0'; accepted: an integer (lower is served first)"),
    ({"slo_ttft_ms": 0}, {}, "body field 'slo_ttft_ms': got 0; accepted: a finite number of milliseconds > 0"),
    ({}, {"x-sagellm-slo-tpot-ms": "fast"}, "header 'x-sagellm-slo-tpot-ms': got 'fast'; accepted: a finite number of milliseconds > 0"),
    ({}, {"x-sagellm-slo-ttft-ms": "inf"}, "header 'x-sagellm-slo-ttft-ms': got 'inf'; accepted: a finite number of milliseconds > 0"),
    ({"user": ""}, {}, "body field 'user': got ''; accepted: a non-empty string (the tenant)"),
    ({"user": 7}, {}, "body field 'user': got 7; accepted: a non-empty string (the tenant)"),
])
def test_bad_values(body, headers, message):
    with pytest.raises(ValueError) as err:
        RequestMetadata.from_openai_extras(body, headers)
    assert str(err.value) == message


def test_constructor_validation():
    with pytest.raises(ValueError, match="RequestMetadata.slo_tpot_ms: got -1; accepted: a finite number > 0"):
        RequestMetadata("r", slo_tpot_ms=-1)
    with pytest.raises(ValueError, match="RequestMetadata.request_id: got ''; accepted: a non-empty string"):
        RequestMetadata("")
    with pytest.raises(ValueError, match="RequestMetadata.priority: got '1'; accepted: an integer"):
        RequestMetadata("r", priority="1")  # type: ignore[arg-type]


def test_headers_and_serialization_round_trip():
    r = RequestMetadata("abc", priority=3, tenant="t", slo_ttft_ms=100.0, arrival_time=2.0)
    headers = r.to_headers()
    assert headers == {"x-request-id": "abc", "x-sagellm-priority": "3", "x-sagellm-tenant": "t", "x-sagellm-slo-ttft-ms": "100.0"}
    assert RequestMetadata.from_openai_extras({}, headers, arrival_time=2.0) == r
    assert RequestMetadata.from_json(r.to_json()) == r
