"""`sage gateway start` options and engine specs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sagellm.control_plane.serve import ENDPOINT_KEYS, START_KEYS, load_gateway_config, parse_engine_spec
from sagellm.core.config import ConfigError


def test_engine_specs():
    assert parse_engine_spec("http://h:1/v1?a=b", "url", ENDPOINT_KEYS) == {"url": "http://h:1/v1?a=b"}
    assert parse_engine_spec("url=http://h:1,kind=vllm,capacity=8", "url", ENDPOINT_KEYS) == {
        "url": "http://h:1", "kind": "vllm", "capacity": "8"
    }
    assert parse_engine_spec("/models/tiny", "model", START_KEYS) == {"model": "/models/tiny"}
    with pytest.raises(ValueError, match="valid keys: model, name, device, capacity, slo_classes|with a key among"):
        parse_engine_spec("model=/m,nmae=x", "model", START_KEYS)
    with pytest.raises(ValueError, match="url= is required"):
        parse_engine_spec("kind=vllm", "url", ENDPOINT_KEYS)


def test_layering_and_validation(tmp_path, monkeypatch):
    f = tmp_path / "gw.yaml"
    f.write_text("port: 9000\npolicy: least_loaded\nengines: [http://a:1, 'url=http://b:2,kind=vllm']\n")
    monkeypatch.setenv("SAGELLM_GATEWAY_PORT", "9100")
    cfg = load_gateway_config(f, {"unhealthy_after": "5"})
    assert (cfg.port, cfg.policy, cfg.unhealthy_after) == (9100, "least_loaded", 5)
    assert cfg.engines == ("http://a:1", "url=http://b:2,kind=vllm")
    with pytest.raises(ConfigError, match="policy: got 'fastest'; accepted: one of 'least_loaded', 'prefix_affinity', 'round_robin'"):
        load_gateway_config(None, {"policy": "fastest"})
    with pytest.raises(ConfigError, match="GatewayConfig.engines: engine spec"):
        load_gateway_config(None, {"engines": ["url=http://a,colour=red"]})


def test_cli_needs_engines(monkeypatch):
    from sagellm.cli.main import app

    monkeypatch.delenv("SAGELLM_GATEWAY_ENGINES", raising=False)
    result = CliRunner().invoke(app, ["gateway", "start", "--port", "0"])
    assert result.exit_code == 2
    assert "--engine URL and/or --start-engine MODEL" in result.output


def test_example_config_loads_and_slo_labels():
    from pathlib import Path

    from sagellm.control_plane.serve import engine_labels

    example = Path(__file__).resolve().parents[3] / "configs" / "examples" / "gateway.yaml"
    cfg = load_gateway_config(example)
    assert len(cfg.start_engines) == 2 and cfg.policy == "prefix_affinity"
    fields = parse_engine_spec(cfg.engines[0], "url", ENDPOINT_KEYS)
    assert engine_labels(fields) == {"slo_classes": "interactive,standard"}
    with pytest.raises(ConfigError, match="slo_classes: got 'fast'"):
        load_gateway_config(None, {"engines": ["url=http://a,slo_classes=fast"]})
