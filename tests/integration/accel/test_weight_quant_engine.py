"""Weight-quantized checkpoints (``sage quantize``) through the real engine on the cpu device.

The oracle: ``transformers`` (float32) on the *dequantized* checkpoint -- the float weights the
quantized codes stand for. The engine's logits must sit on top of it, far closer than to the
original float model. How close is calibrated in the same test: the packed CPU kernels compute in
bfloat16 and AWQ models run in float16, so the engine may differ from the oracle by up to twice
what transformers itself differs by when it runs the dequantized checkpoint in that dtype.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sagellm.accel.quantization.checkpoint import WEIGHT_QUANT_FORMATS, quantize_checkpoint
from sagellm.accel.quantization.weights import AwqTensors, dequantize_channelwise_int8, from_awq
from tests.integration.accel.scripts import load_guard

pytestmark = pytest.mark.slow

PROMPTS = [[1, 50, 60, 70, 80, 90, 100, 110], [1, 300, 301, 302], [1, 7, 1000, 2000, 3000, 4000]]


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    """A tiny Llama whose MLP width (768) AWQ group size 128 divides."""
    from sagellm.models.tiny import TinyModelSpec, create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("wq") / "tiny-768", TinyModelSpec(intermediate_size=768))


@pytest.fixture(scope="module")
def guard():
    return load_guard()


def _dequantized_copy(qdir, out):
    """A float32 checkpoint holding the weights ``qdir``'s codes decode to (for transformers)."""
    config = json.loads((qdir / "config.json").read_text())
    qc = config.pop("quantization_config")
    config["torch_dtype"] = config["dtype"] = "float32"
    tensors = load_file(str(qdir / "model.safetensors"))
    dense = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            stem = name.removesuffix("qweight")
            awq = AwqTensors(t, tensors[stem + "qzeros"], tensors[stem + "scales"])
            q = from_awq(awq, qc["bits"], qc["group_size"])
            dense[stem + "weight"] = q.dequantize(torch.float32)
        elif name.endswith((".qzeros", ".scales", ".scale")):
            continue
        elif t.dtype == torch.int8:
            dense[name] = dequantize_channelwise_int8(t, tensors[name.removesuffix("weight") + "scale"], torch.float32)
        else:
            dense[name] = t.float()
    out.mkdir()
    save_file(dense, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    for path in qdir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(path, out / path.name)
    return out


def _transformers_logits(model_dir, prompts, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    with torch.inference_mode():
        return [model(torch.tensor([p])).logits[0].double() for p in prompts]


def _rel_error(a, b):
    return max(float((x.double() - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def test_our_awq_packing_is_what_lmdeploy_unpacks(float_model, tmp_path):
    from lmdeploy.pytorch.backends.default.awq_modules import unpack_awq as lmdeploy_unpack

    from sagellm.accel.quantization.weights import quantize_groupwise, to_awq

    w = load_file(str(float_model / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    q = quantize_groupwise(w, 4, 128)
    awq = to_awq(q)
    codes, zeros = lmdeploy_unpack(awq.qweight, awq.qzeros, 4)
    assert torch.equal(codes.to(torch.uint8), q.codes.t())
    assert torch.equal(zeros.to(torch.uint8), q.zeros.t())


@pytest.mark.parametrize(
    "fmt,engine_dtype,kernel,noise_dtype",
    [
        # measured (2-core dev machine), max |logits - oracle| / max |oracle|: awq-w4 3.3e-2 (bf16 noise 3.0e-2,
        # original float model 0.86); w8 2.9e-2 (3.0e-2, 0.135); awq-w8 3.2e-3 (fp16 noise 3.8e-3, 0.058)
        ("awq-w4", torch.float16, "int4pack", torch.bfloat16),
        ("w8", torch.float32, "int8pack", torch.bfloat16),
        ("awq-w8", torch.float16, "dequant", torch.float16),
    ],
)
def test_quantized_checkpoint_runs_the_quantized_model(float_model, guard, tmp_path, fmt, engine_dtype, kernel,
                                                       noise_dtype):
    qdir = tmp_path / fmt
    quantize_checkpoint(float_model, qdir, fmt, 128)
    dequantized = _dequantized_copy(qdir, tmp_path / "dequantized")
    oracle = _transformers_logits(dequantized, PROMPTS)
    noise = _rel_error(_transformers_logits(dequantized, PROMPTS, noise_dtype), oracle)
    original = _transformers_logits(float_model, PROMPTS)

    pipe = guard.build_pipeline(guard.GuardConfig(model=str(qdir), num_gpu_blocks=64, max_batch_size=4))
    try:
        model = pipe.engine.executor.model_agent.patched_model.get_model()
        qkv = model.model.layers[0].self_attn.qkv_proj
        impl_kernel = getattr(qkv.impl, "kernel", None) or qkv.impl.__class__.__name__
        logits = guard.sequence_logits(pipe, PROMPTS)
        generated = guard.greedy_tokens(pipe, PROMPTS, 12)
        embed_dtype = model.model.embed_tokens.weight.dtype
    finally:
        pipe.close()

    assert embed_dtype == engine_dtype  # LMDeploy runs AWQ models in float16; SmoothQuant keeps the model dtype
    if WEIGHT_QUANT_FORMATS.get(fmt).quant_method == "awq":
        assert impl_kernel == kernel
    else:
        assert type(qkv.impl).__name__ == "CpuLinearW8A16Impl"
        assert qkv.weight.dtype == torch.int8
    assert [len(g) for g in generated] == [12, 12, 12]
    to_oracle = _rel_error(logits, oracle)
    to_original = _rel_error(logits, original)
    print(f"\n{fmt}: max |logits - dequantized oracle| / max |oracle| = {to_oracle:.2e} ({noise_dtype} noise "
          f"{noise:.2e}); vs the original float model {to_original:.2e}")
    assert to_oracle <= 2 * noise
    assert to_oracle * 4 < to_original  # it runs the quantized weights, not the float ones
