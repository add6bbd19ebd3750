import pytest

from sagellm.core.engine_info import EngineInfo, EngineKind, EngineState


def test_defaults_and_state():
    e = EngineInfo(engine_id="local", kind="sagellm", model="tiny")
    assert e.kind is EngineKind.SAGELLM and e.state is EngineState.STARTING
    assert not e.is_routable and not e.is_remote
    h = e.with_state("healthy")
    assert h.state is EngineState.HEALTHY and h.is_routable
    assert e.state is EngineState.STARTING


def test_remote_engine_needs_url():
    with pytest.raises(ValueError) as err:
        EngineInfo(engine_id="v", kind="vllm", model="m")
    assert str(err.value) == "EngineInfo.base_url: got None; accepted: an http:// or https:// URL for a vllm engine"
    with pytest.raises(ValueError, match="EngineInfo.base_url: got 'localhost:8000'"):
        EngineInfo(engine_id="v", kind="vllm", model="m", base_url="localhost:8000")


@pytest.mark.parametrize("kw,fragment", [
    ({"kind": "tgi"}, "EngineInfo.kind: got 'tgi'; accepted: one of 'sagellm', 'vllm', 'lmdeploy', 'sglang', 'openai'"),
    ({"state": "up"}, "EngineInfo.state: got 'up'; accepted: one of 'starting', 'healthy', 'unhealthy', 'stopped'"),
    ({"capacity": 0}, "EngineInfo.capacity: got 0; accepted: an integer >= 1"),
    ({"labels": {"zone": 1}}, "EngineInfo.labels: got {'zone': 1}; accepted: a dict of str -> str"),
])
def test_validation(kw, fragment):
    base = dict(engine_id="e", kind="sagellm", model="m")
    base.update(kw)
    with pytest.raises(ValueError) as err:
        EngineInfo(**base)
    assert str(err.value) == fragment


def test_round_trip():
    e = EngineInfo(engine_id="v1", kind=EngineKind.VLLM, model="qwen", device="cuda:0",
                   base_url="http://10.0.0.2:8000", capacity=64, state="healthy", labels={"zone": "a"})
    assert e.to_dict() == {
        "engine_id": "v1", "kind": "vllm", "model": "qwen", "device": "cuda:0",
        "base_url": "http://10.0.0.2:8000", "capacity": 64, "state": "healthy", "labels": {"zone": "a"},
    }
    assert EngineInfo.from_json(e.to_json()) == e
    assert EngineInfo.from_yaml(e.to_yaml()) == e
