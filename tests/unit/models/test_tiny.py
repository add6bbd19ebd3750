from __future__ import annotations

import json
import os

import pytest
import torch

from sagellm.models import tiny
from sagellm.models.corpus import sample_prompts
from sagellm.models.tiny import (
    MANIFEST_NAME,
    PRESETS,
    TinyModelMismatchError,
    TinyModelSpec,
    create_tiny_model,
    default_model_path,
    ensure_default_model,
    preset_spec,
    read_manifest,
    verify_tiny_model,
)

SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Small checkpoints: llama (twice, same seed), llama seed 1, qwen2."""
    root = tmp_path_factory.mktemp("tiny")
    specs = {
        "llama": TinyModelSpec(**SMALL),
        "llama_again": TinyModelSpec(**SMALL),
        "llama_seed1": TinyModelSpec(**SMALL, seed=1),
        "qwen2": TinyModelSpec(architecture="qwen2", **SMALL),
    }
    return {name: (create_tiny_model(root / name, spec), spec) for name, spec in specs.items()}


@pytest.fixture(scope="module")
def default_size(tmp_path_factory):
    """The default `tiny` preset, loaded in transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = create_tiny_model(tmp_path_factory.mktemp("default") / "tiny-llama", PRESETS["tiny"])
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_loads_with_transformers(models, name) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, spec = models[name]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    expected_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[name]
    assert type(model).__name__ == expected_class
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == spec.num_parameters() == read_manifest(path)["num_parameters"]
    assert len(tok) == model.config.vocab_size == 512
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    inputs = tok(["hello world"], return_tensors="pt")
    logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], 512) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_config_uses_standard_fields_lmdeploy_reads(models, name) -> None:
    path, spec = models[name]
    config = json.loads((path / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert config["hidden_act"] == "silu"
    assert config["head_dim"] * config["num_attention_heads"] == config["hidden_size"]
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is False
    if name == "qwen2":
        assert config["use_sliding_window"] is False
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 0, "do_sample": False, "eos_token_id": [1, 3], "pad_token_id": 4,
                          "transformers_version": generation["transformers_version"]}


def test_same_seed_identical_bytes_different_seed_different(models) -> None:
    a, b, c = (models[name][0] for name in ("llama", "llama_again", "llama_seed1"))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert read_manifest(a)["content_sha256"] == read_manifest(b)["content_sha256"]
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()  # tokenizer_seed unchanged


def test_manifest_records_spec_and_verifies(models, tmp_path) -> None:
    path, spec = models["llama"]
    manifest = read_manifest(path)
    assert TinyModelSpec.from_dict(manifest["spec"]) == spec
    assert manifest["spec_hash"] == spec.spec_hash()
    assert sorted(manifest["files"]) == sorted(p.name for p in path.iterdir() if p.name != MANIFEST_NAME)
    assert verify_tiny_model(path)
    assert not verify_tiny_model(tmp_path)


def test_idempotent_and_mismatch_errors(models) -> None:
    path, spec = models["llama"]
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert create_tiny_model(path, spec) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    with pytest.raises(TinyModelMismatchError, match=r"different spec \(seed: 0 -> 7\).*overwrite"):
        create_tiny_model(path, spec.replace(seed=7))
    with pytest.raises(FileExistsError):
        create_tiny_model(path, spec.replace(architecture="qwen2"))


def test_overwrite_replaces_and_leaves_no_temp_dirs(tmp_path) -> None:
    spec = TinyModelSpec(**SMALL)
    path = create_tiny_model(tmp_path / "m", spec)
    create_tiny_model(path, spec.replace(seed=5), overwrite=True)
    assert read_manifest(path)["spec"]["seed"] == 5 and verify_tiny_model(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_foreign_directory_is_refused_empty_directory_is_used(tmp_path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(TinyModelMismatchError, match="not an embedded sagellm model"):
        create_tiny_model(tmp_path / "foreign", TinyModelSpec(**SMALL))
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert verify_tiny_model(create_tiny_model(tmp_path / "empty", TinyModelSpec(**SMALL)))


def test_crash_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    def boom(config, spec):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tiny, "_init_weights", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        create_tiny_model(tmp_path / "m", TinyModelSpec(**SMALL))
    assert list(tmp_path.iterdir()) == []


def test_default_model_path_and_ensure(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    path = default_model_path()
    assert path == tmp_path / "models" / f"tiny-llama-v{tiny.FORMAT_VERSION}-{PRESETS['tiny'].spec_hash()}"
    assert "llama-2" not in path.name and "llama2" not in path.name
    small = TinyModelSpec(**SMALL)
    made = ensure_default_model(small)
    assert made == default_model_path(small) and verify_tiny_model(made)
    assert ensure_default_model(small) == made
    monkeypatch.delenv("SAGELLM_CACHE_DIR")
    assert str(default_model_path()).startswith(os.path.expanduser("~/.cache/sagellm/models/"))


def test_greedy_generation_of_default_size_is_not_degenerate(default_size) -> None:
    model, tok = default_size
    specials = set(range(5))
    continuations = []
    for prompt in sample_prompts(4, seed=0):
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, do_sample=False, max_new_tokens=16)
        new = out[0, ids.input_ids.shape[1]:].tolist()
        assert len(new) == 16 and not specials & set(new)
        assert len(set(new)) >= 4, tok.decode(new)
        continuations.append(new)
    assert len({tuple(c) for c in continuations}) == len(continuations)


def test_spec_hash_and_dict_round_trip() -> None:
    spec = TinyModelSpec()
    assert spec.spec_hash() == TinyModelSpec().spec_hash() != spec.replace(seed=1).spec_hash()
    assert TinyModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown TinyModelSpec fields: colour"):
        TinyModelSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_presets() -> None:
    assert preset_spec("tiny") == TinyModelSpec()
    assert preset_spec("100m") == preset_spec("small-100m") == PRESETS["small-100m"]
    assert 95e6 < PRESETS["small-100m"].num_parameters() < 110e6
    assert preset_spec("tiny", architecture="qwen2", seed=None).architecture == "qwen2"
    with pytest.raises(ValueError, match="unknown preset 'huge'; valid: 100m, default, small-100m, tiny"):
        preset_spec("huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(architecture="gpt2"), "unknown architecture 'gpt2'; valid: llama, qwen2"),
        (dict(hidden_size=0), "hidden_size must be a positive int"),
        (dict(num_layers=2.0), "num_layers must be a positive int"),
        (dict(num_heads=3), r"hidden_size \(256\) must be divisible by num_heads \(3\)"),
        (dict(num_heads=4, num_kv_heads=3), r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
        (dict(hidden_size=12, num_heads=4, num_kv_heads=1), "head_dim = hidden_size // num_heads = 3 must be even"),
        (dict(vocab_size=100), "vocab_size must be >= 261"),
        (dict(seed=-1), "seed must be an int >= 0"),
        (dict(rope_theta=0), "rope_theta must be a positive number"),
        (dict(dtype="int8"), "unknown dtype 'int8'; valid: float32, bfloat16, float16"),
        (dict(tie_word_embeddings="yes"), "tie_word_embeddings must be a bool"),
    ],
)
def test_spec_validation(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        TinyModelSpec(**changes)


def test_tied_bf16_variant(tmp_path) -> None:
    from safetensors import safe_open

    spec = TinyModelSpec(**SMALL, tie_word_embeddings=True, dtype="bfloat16")
    path = create_tiny_model(tmp_path / "tied", spec)
    with safe_open(path / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert read_manifest(path)["num_parameters"] == spec.num_parameters()
