"""`sage llm engine start` options: one dataclass, documented file, layering, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagellm.control_plane.engine_config import EngineStartConfig, engine_start_args, render_yaml
from sagellm.core.config import ConfigError, load_config, option_specs

CONFIG_FILE = Path(__file__).resolve().parents[3] / "configs" / "engines" / "sagellm.yaml"


def test_committed_file_documents_every_option_with_its_default():
    assert CONFIG_FILE.read_text() == render_yaml(), "regenerate with engine_config.render_yaml()"
    assert load_config(EngineStartConfig, file=CONFIG_FILE, env={}) == EngineStartConfig()
    text = CONFIG_FILE.read_text()
    for spec in option_specs(EngineStartConfig):
        assert f"\n{spec.path}: " in text and spec.env in text


def test_precedence_file_env_flag(tmp_path):
    f = tmp_path / "engine.yaml"
    f.write_text("port: 8100\nblock_size: 32\ndevice: cpu\napi_keys: [a]\n")
    env = {"SAGELLM_BLOCK_SIZE": "16", "SAGELLM_API_KEYS": "b,c"}
    cfg = load_config(EngineStartConfig, file=f, env=env, overrides={"port": "8200"})
    assert (cfg.port, cfg.block_size, cfg.device, cfg.api_keys) == (8200, 16, "cpu", ("b", "c"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_size": "48"}, "block_size: got 48; accepted: a power of two >= 16"),
        ({"device": "gpu"}, "device: got 'gpu'; accepted: one of 'auto'"),
        ({"dtype": "fp64"}, "option 'dtype' from flag --dtype: got 'fp64'; accepted: one of 'auto', 'float32', 'bfloat16', 'float16'"),
        ({"port": "70000"}, "port: got 70000; accepted: 0 (pick a free port) or 1..65535"),
        ({"cache_max_entry_count": "1.5"}, "cache_max_entry_count: got 1.5; accepted: a fraction in (0, 1)"),
        ({"session_len": "8"}, "session_len: got 8; accepted: an integer >= 16"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"kv_transport": "preset=fast"}, "unknown kv transport preset 'fast'; valid names: ['high-bw', 'low-cost', 'low-latency']"),
        ({"kv_tiers": "device,disk"}, "kv_tiers: unknown tier(s) disk; accepted: device, host, ssd"),
        ({"kv_tiers": "device,ssd"}, "ssd_cache_dir: required when the ssd tier is on"),
        ({"kv_policy": "mru"}, "kv_policy: got 'mru'; accepted: cost_aware, lfu, lru"),
        ({"prefix_caching": "maybe"}, "option 'prefix_caching' from flag --prefix-caching: got 'maybe'; accepted: a boolean"),
        ({"num_speculative_tokens": "0"}, "num_speculative_tokens: got 0; accepted: an integer >= 1"),
        ({"num_speculative_tokens": "17"}, "num_speculative_tokens: got 17; accepted: 1..16"),
        ({"kv_dtype": "fp8"}, "accepted: one of 'auto', 'int8', 'int4', 'fp8_e4m3', 'fp8_e5m2'"),
        ({"kv_dtype": "fp8_e4m3", "device": "cuda"},
         "EngineStartConfig.kv_dtype: got 'fp8_e4m3' on device 'cuda'; LMDeploy 0.11 has no fp8 KV cache there "
         "(sagellm's kernels serve it on 'cpu' only); accepted on 'cuda': 'auto', 'int8', 'int4'"),
        ({"kv_dtype": "fp8_e5m2", "device": "npu"}, "got 'fp8_e5m2' on device 'ascend'"),
    ],
)
def test_invalid_values_name_the_option_and_what_is_accepted(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(EngineStartConfig, env={}, overrides=overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("device", ["cpu", "auto", " CPU "])
@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_dtype_on_cpu_or_auto(device, kv_dtype):
    """``auto`` passes here; the CLI checks it against the resolved device."""
    cfg = load_config(EngineStartConfig, env={}, overrides={"kv_dtype": kv_dtype, "device": device})
    assert cfg.kv_dtype == kv_dtype


def test_file_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("blocksize: 32\n")
    with pytest.raises(ConfigError, match=r"unknown option 'blocksize'"):
        load_config(EngineStartConfig, file=f, env={})


def test_engine_start_args_round_trip():
    cfg = EngineStartConfig(
        model="/m", device="cpu", port=9000, block_size=16, prefix_caching=False, api_keys=("k1", "k2"),
        kv_transport="preset=low-latency", sample=False,
    )
    args = engine_start_args(cfg)
    assert args == [
        "/m", "--device", "cpu", "--port", "9000", "--block-size", "16", "--no-prefix-caching",
        "--api-keys", "k1,k2", "--no-sample", "--kv-transport", "preset=low-latency",
    ]
    specs = {s.flag: s for s in option_specs(EngineStartConfig)}
    overrides = {}
    it = iter(args[1:])
    for flag in it:
        if flag.startswith("--no-"):
            overrides[specs["--" + flag[5:]].path] = False
        else:
            overrides[specs[flag].path] = next(it)
    assert load_config(EngineStartConfig, env={}, overrides={"model": "/m", **overrides}) == cfg
    assert cfg.kv_transport_config().preset == "low-latency"


def test_cli_rejects_invalid_values_before_starting(monkeypatch):
    from sagellm.cli.main import app

    monkeypatch.delenv("SAGELLM_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["llm", "engine", "start", "/nonexistent", "--block-size", "48"])
    assert result.exit_code == 2
    assert "block_size: got 48" in result.output
    result = CliRunner().invoke(app, ["llm", "engine", "start", "/nonexistent", "--kv-transport", "preset=nope"])
    assert result.exit_code == 2 and "valid names: ['high-bw', 'low-cost', 'low-latency']" in result.output
    result = CliRunner().invoke(app, ["llm", "engine", "start", "--config", "/nonexistent.yaml"])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_kv_tier_options_layer_and_reach_the_engine_environment(tmp_path):
    from sagellm.kv_runtime.config import KVTierConfig, to_environment

    env = {"SAGELLM_KV_TIERS": "device,host,ssd", "SAGELLM_SSD_CACHE_DIR": str(tmp_path)}
    cfg = load_config(EngineStartConfig, env=env, overrides={"kv_policy": "cost_aware", "host_cache_gib": "2"})
    tiers = cfg.kv_tier_config()
    assert tiers == KVTierConfig(kv_tiers=("device", "host", "ssd"), host_cache_gib=2.0, ssd_cache_dir=str(tmp_path),
                                 ssd_cache_gib=16.0, kv_policy="cost_aware")
    assert to_environment(tiers) == {
        "SAGELLM_KV_TIERS": "device,host,ssd", "SAGELLM_HOST_CACHE_GIB": "2.0", "SAGELLM_SSD_CACHE_GIB": "16.0",
        "SAGELLM_KV_POLICY": "cost_aware", "SAGELLM_SSD_CACHE_DIR": str(tmp_path),
    }
    # what the engine-process plugin reads back is the same config
    assert load_config(KVTierConfig, env=to_environment(tiers)) == tiers
    assert EngineStartConfig().kv_tier_config() == KVTierConfig()


def test_speculative_decoding_options_build_the_profile(tmp_path):
    env = {"SAGELLM_DRAFT_MODEL": "/drafts/small"}
    cfg = load_config(EngineStartConfig, env=env, overrides={"num_speculative_tokens": "4"})
    profile = cfg.spec_decode_profile()
    assert (profile.method, profile.draft_model, profile.num_speculative_tokens) == ("draft_model", "/drafts/small", 4)
    assert EngineStartConfig().spec_decode_profile() is None


def test_cli_rejects_a_draft_without_the_targets_vocabulary(tiny_model_dir, tmp_path, monkeypatch):
    import json
    import os

    from sagellm.cli.main import app

    target = tiny_model_dir("llama")
    draft = tmp_path / "draft"
    draft.mkdir()
    config = json.loads((target / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] * 2}))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    result = CliRunner().invoke(app, ["llm", "engine", "start", str(target), "--device", "cpu",
                                      "--draft-model", str(draft)])
    assert result.exit_code == 2
    assert f"--draft-model {draft}" in result.output and "vocab_size" in result.output
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # rejected before anything was set up


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_cli_rejects_fp8_kv_off_the_cpu(tiny_model_dir, monkeypatch, device):
    """``--device cuda`` fails in the config; ``auto`` once it resolves to a non-cpu device (faked here)."""
    import os
    from types import SimpleNamespace

    import sagellm.hal
    from sagellm.cli.main import app

    monkeypatch.setattr(sagellm.hal, "resolve_device",
                        lambda requested: SimpleNamespace(platform="cuda", lmdeploy_device_type="cuda"))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    result = CliRunner().invoke(app, ["llm", "engine", "start", str(tiny_model_dir("llama")), "--device", device,
                                      "--kv-dtype", "fp8_e4m3"])
    assert result.exit_code == 2
    assert ("EngineStartConfig.kv_dtype: got 'fp8_e4m3' on device 'cuda'; LMDeploy 0.11 has no fp8 KV cache there "
            "(sagellm's kernels serve it on 'cpu' only); accepted on 'cuda': 'auto', 'int8', 'int4'") in result.output
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # rejected before anything was set up
