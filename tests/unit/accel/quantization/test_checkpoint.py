"""``quantize_checkpoint``: what it writes for each format, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sagellm.accel.quantization.checkpoint import (
    MANIFEST_NAME,
    WEIGHT_QUANT_FORMATS,
    is_quantizable,
    quantize_checkpoint,
)
from sagellm.accel.quantization.weights import AwqTensors, from_awq
from sagellm.core.registry import UnknownNameError


def _checkpoint(path, in_features=128, intermediate=256, bias=False):
    g = torch.Generator().manual_seed(0)
    h = in_features
    tensors = {
        "model.embed_tokens.weight": torch.randn(64, h, generator=g),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": torch.randn(64, h, generator=g),
        "model.layers.0.input_layernorm.weight": torch.ones(h),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(h, h, generator=g) * 0.05,
        "model.layers.0.self_attn.o_proj.weight": torch.randn(h, h, generator=g) * 0.05,
        "model.layers.0.mlp.up_proj.weight": torch.randn(intermediate, h, generator=g) * 0.05,
        "model.layers.0.mlp.down_proj.weight": torch.randn(h, intermediate, generator=g) * 0.05,
    }
    if bias:
        tensors["model.layers.0.self_attn.q_proj.bias"] = torch.randn(h, generator=g)
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "torch_dtype": "float32",
                                                  "dtype": "float32", "hidden_size": h}))
    (path / "tokenizer.json").write_text("{}")
    (path / "sagellm_tiny.json").write_text("{}")
    return path, tensors


def test_quantizable_names():
    w = torch.zeros(4, 4)
    assert is_quantizable("model.layers.3.mlp.gate_proj.weight", w)
    assert not is_quantizable("model.layers.3.mlp.gate_proj.bias", torch.zeros(4))
    assert not is_quantizable("lm_head.weight", w)
    assert not is_quantizable("model.embed_tokens.weight", w)
    assert not is_quantizable("model.layers.0.input_layernorm.weight", torch.zeros(4))


def test_awq_w4_checkpoint(tmp_path):
    src, tensors = _checkpoint(tmp_path / "src", bias=True)
    report = quantize_checkpoint(src, tmp_path / "dst", "awq-w4", 64)
    dst = tmp_path / "dst"
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                             "version": "gemm"}
    assert config["torch_dtype"] == "float16" and config["dtype"] == "float16"
    out = load_file(str(dst / "model.safetensors"))
    stem = "model.layers.0.mlp.down_proj."
    assert out[stem + "qweight"].dtype == torch.int32 and tuple(out[stem + "qweight"].shape) == (256, 16)
    assert tuple(out[stem + "qzeros"].shape) == (4, 16)
    assert out[stem + "scales"].dtype == torch.float16 and tuple(out[stem + "scales"].shape) == (4, 128)
    assert stem + "weight" not in out
    assert out["lm_head.weight"].dtype == torch.float16
    assert out["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float16
    # the stored codes decode to the source weight within the grid's bound
    q = from_awq(AwqTensors(out[stem + "qweight"], out[stem + "qzeros"], out[stem + "scales"]), 4, 64)
    error = (q.dequantize(torch.float64) - tensors[stem + "weight"].double()).abs().max()
    assert float(error) <= float(q.scales.double().max()) * 0.51
    assert report.quantized_tensors == 4 and report.kept_tensors == 5
    expected = ["config.json", MANIFEST_NAME, "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in dst.iterdir()) == sorted(expected)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    assert manifest["format"] == "awq-w4" and len(manifest["layers"]) == 4
    assert report.weight_bytes < report.source_weight_bytes


def test_w8_checkpoint_keeps_dtype(tmp_path):
    src, tensors = _checkpoint(tmp_path / "src")
    quantize_checkpoint(src, tmp_path / "dst", "w8")
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "smooth_quant", "quant_dtype": "int8"}
    assert config["torch_dtype"] == "float32"
    out = load_file(str(tmp_path / "dst" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj."
    assert out[name + "weight"].dtype == torch.int8 and tuple(out[name + "scale"].shape) == (128, 1)
    assert out["lm_head.weight"].dtype == torch.float32
    assert torch.equal(out["lm_head.weight"], tensors["lm_head.weight"])


def test_refusals(tmp_path):
    src, _ = _checkpoint(tmp_path / "src", intermediate=200)
    with pytest.raises(ValueError, match=r"down_proj.weight \[128, 200\] does not fit awq-w4 with group_size 128"):
        quantize_checkpoint(src, tmp_path / "a", "awq-w4")
    with pytest.raises(ValueError, match="power of two"):
        quantize_checkpoint(src, tmp_path / "a", "awq-w4", 100)
    with pytest.raises(UnknownNameError, match="awq-w4"):
        quantize_checkpoint(src, tmp_path / "a", "gptq")
    with pytest.raises(ValueError, match="no config.json"):
        quantize_checkpoint(tmp_path, tmp_path / "a", "w8")
    quantize_checkpoint(src, tmp_path / "q", "w8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq", "w8")
    with pytest.raises(ValueError, match="not empty"):
        quantize_checkpoint(src, tmp_path / "q", "w8")
    quantize_checkpoint(src, tmp_path / "q", "w8", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directories left


def test_formats_registry():
    assert list(WEIGHT_QUANT_FORMATS.names()) == ["awq-w4", "awq-w8", "w8"]
    assert WEIGHT_QUANT_FORMATS.get("awq-w4").profile_weight_format == "awq_int4"
