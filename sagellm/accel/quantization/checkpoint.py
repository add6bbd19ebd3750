"""Quantize a float Hugging Face checkpoint into a weight-quantized one LMDeploy loads (``sage quantize``).

Formats (:data:`WEIGHT_QUANT_FORMATS`):

=========  =============================================  ================================================
format     checkpoint (what LMDeploy 0.11 reads)           on sagellm's cpu device
=========  =============================================  ================================================
``awq-w4`` ``quant_method: awq``, 4-bit, ``group_size``   ``AwqLinear`` -> torch's int4 CPU GEMM (W4A16);
           (AutoAWQ "GEMM" layout, float16 scales)        LMDeploy runs AWQ models in float16
``awq-w8`` ``quant_method: awq``, 8-bit, ``group_size``   ``AwqLinear`` -> dequantize + float32 GEMM (slow;
           (``lmdeploy lite auto_awq --w-bits 8`` layout)  no packed 8-bit group kernel in torch)
``w8``     ``quant_method: smooth_quant``, int8 weight +  ``W8A8Linear`` run weight-only (W8A16) -> torch's
           float32 per-channel ``scale`` (LMDeploy's W8A8  int8 CPU GEMM; keeps the model dtype
           layout, without smoothing)
=========  =============================================  ================================================

Quantized: every 2-d ``*_proj.weight`` inside the decoder layers (attention q/k/v/o, MLP
gate/up/down). Kept as they are: embeddings, ``lm_head``, norms, biases. Weights are rounded to
nearest on the grid (no activation-aware scale search: no calibration data is needed).

The output is written to a sibling staging directory and renamed into place, so an interrupted run
never leaves a half checkpoint; ``sagellm_quantize.json`` records the format and per-layer errors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sagellm.accel.quantization.weights import (
    dequantize_channelwise_int8,
    quantize_channelwise_int8,
    quantize_groupwise,
    to_awq,
)
from sagellm.core.registry import Registry

MANIFEST_NAME = "sagellm_quantize.json"
OUTPUT_WEIGHTS = "model.safetensors"
#: Files never copied from the source: weights (rewritten), its config (rewritten), a tiny-model manifest.
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json")
_SKIPPED_NAMES = ("config.json", "sagellm_tiny.json", MANIFEST_NAME)


@dataclass(frozen=True)
class WeightQuantFormat:
    """One ``sage quantize --format``.

    Attributes:
        name: the CLI name.
        quant_method: ``quantization_config.quant_method`` LMDeploy dispatches on.
        bits: bits per weight code.
        grouped: group-wise (AWQ) vs per-channel scales.
        profile_weight_format: ``QuantizationProfile.weight_format`` this corresponds to.
    """

    name: str
    quant_method: str
    bits: int
    grouped: bool
    profile_weight_format: str

    def quantization_config(self, group_size: int) -> dict:
        if self.quant_method == "awq":
            return {"quant_method": "awq", "bits": self.bits, "group_size": group_size, "zero_point": True,
                    "version": "gemm"}
        return {"quant_method": "smooth_quant", "quant_dtype": "int8"}


WEIGHT_QUANT_FORMATS: Registry[WeightQuantFormat] = Registry("weight quantization format")
WEIGHT_QUANT_FORMATS.register("awq-w4", WeightQuantFormat("awq-w4", "awq", 4, True, "awq_int4"))
WEIGHT_QUANT_FORMATS.register("awq-w8", WeightQuantFormat("awq-w8", "awq", 8, True, "w8a16"))
WEIGHT_QUANT_FORMATS.register("w8", WeightQuantFormat("w8", "smooth_quant", 8, False, "w8a16"))


@dataclass(frozen=True)
class LayerError:
    """Quantization error of one weight: max |w - w_hat| and that over max |w|."""

    name: str
    shape: tuple[int, int]
    max_abs_error: float
    max_rel_error: float


@dataclass
class QuantizeReport:
    """What :func:`quantize_checkpoint` wrote."""

    source: str
    destination: str
    format: str
    group_size: int | None
    quantized_tensors: int
    kept_tensors: int
    source_weight_bytes: int
    weight_bytes: int
    layers: list[LayerError] = field(default_factory=list)

    @property
    def compression(self) -> float:
        return self.source_weight_bytes / self.weight_bytes if self.weight_bytes else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["compression"] = self.compression
        return data


def is_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """A decoder-layer linear weight (``model.layers.N.<block>.<x>_proj.weight``)."""
    return tensor.dim() == 2 and tensor.is_floating_point() and ".layers." in name and name.endswith("_proj.weight")


def _load_tensors(src: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"quantize: {src} holds no *.safetensors weights; accepted: a Hugging Face safetensors checkpoint"
        )
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(load_file(str(path)))
    return tensors


def _check_shape(fmt: WeightQuantFormat, name: str, shape: tuple[int, int], group_size: int) -> None:
    out_features, in_features = shape
    per_int = 32 // fmt.bits
    if fmt.grouped and (in_features % group_size or out_features % per_int):
        raise ValueError(
            f"quantize: {name} [{out_features}, {in_features}] does not fit {fmt.name} with group_size {group_size}: "
            f"AWQ needs in_features divisible by group_size and out_features divisible by {per_int}"
        )


def _quantize_tensor(fmt: WeightQuantFormat, name: str, weight: torch.Tensor, group_size: int):
    """(tensors to write for this weight, its LayerError)."""
    reference = weight.double()
    stem = name.removesuffix("weight")
    if fmt.grouped:
        quantized = quantize_groupwise(weight, fmt.bits, group_size, scale_dtype=torch.float16)
        awq = to_awq(quantized)
        out = {stem + "qweight": awq.qweight, stem + "qzeros": awq.qzeros, stem + "scales": awq.scales}
        error = (quantized.dequantize(torch.float64) - reference).abs().max()
    else:
        codes, scale = quantize_channelwise_int8(weight)
        out = {name: codes, stem + "scale": scale}
        error = (dequantize_channelwise_int8(codes, scale, torch.float64) - reference).abs().max()
    peak = float(reference.abs().max())
    layer = LayerError(name, tuple(weight.shape), float(error), float(error) / peak if peak else 0.0)
    return out, layer


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def quantize_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, group_size: int = 128,
                        *, overwrite: bool = False) -> QuantizeReport:
    """Write ``src`` quantized into ``fmt`` at ``dst`` (see the module docstring).

    Raises:
        ValueError: unknown format, bad group size, a source that is not a float safetensors
            checkpoint or is already quantized, a layer shape the format cannot hold, or an occupied
            ``dst`` without ``overwrite``.
    """
    spec = WEIGHT_QUANT_FORMATS.get(fmt)
    src, dst = Path(src), Path(dst)
    if spec.grouped and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1
                         or group_size & (group_size - 1)):
        raise ValueError(f"quantize: group_size {group_size!r}; accepted: a power of two (AWQ uses 128)")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ValueError(f"quantize: {src} has no config.json; accepted: a Hugging Face model directory")
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        raise ValueError(f"quantize: {src} is already quantized ({config['quantization_config'].get('quant_method')})")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ValueError(f"quantize: {dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if dst.resolve() == src.resolve():
        raise ValueError("quantize: the destination is the source directory")

    tensors = _load_tensors(src)
    targets = [name for name, t in tensors.items() if is_quantizable(name, t)]
    if not targets:
        raise ValueError(f"quantize: found no decoder-layer *_proj.weight tensors in {src}")
    for name in targets:
        _check_shape(spec, name, tuple(tensors[name].shape), group_size)

    written: dict[str, torch.Tensor] = {}
    layers: list[LayerError] = []
    for name, tensor in tensors.items():
        if name in targets:
            out, layer = _quantize_tensor(spec, name, tensor, group_size)
            written.update(out)
            layers.append(layer)
        elif spec.quant_method == "awq" and tensor.is_floating_point():
            written[name] = tensor.to(torch.float16)  # LMDeploy runs AWQ models in float16
        else:
            written[name] = tensor

    config["quantization_config"] = spec.quantization_config(group_size)
    if spec.quant_method == "awq":  # LMDeploy reads torch_dtype; transformers 4.57 also writes dtype
        config["torch_dtype"] = "float16"
        if "dtype" in config:
            config["dtype"] = "float16"
    report = QuantizeReport(
        source=str(src), destination=str(dst), format=spec.name, group_size=group_size if spec.grouped else None,
        quantized_tensors=len(targets), kept_tensors=len(tensors) - len(targets),
        source_weight_bytes=_nbytes(tensors), weight_bytes=_nbytes(written), layers=layers,
    )
    _write(src, dst, config, written, report, overwrite=overwrite)
    return report


def _write(src: Path, dst: Path, config: dict, tensors: dict[str, torch.Tensor], report: QuantizeReport,
           *, overwrite: bool) -> None:
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / OUTPUT_WEIGHTS),
                  metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for path in src.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name not in _SKIPPED_NAMES \
                    and not path.name.endswith(_SKIPPED_SUFFIXES):
                shutil.copy2(path, staging / path.name)
        (staging / MANIFEST_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if dst.exists():
            if not overwrite and any(dst.iterdir()):
                raise ValueError(f"quantize: {dst} appeared while quantizing; not replaced")
            shutil.rmtree(dst)
        staging.chmod(0o755)  # mkdtemp makes it private
        os.rename(staging, dst)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
