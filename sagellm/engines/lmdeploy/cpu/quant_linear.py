"""LMDeploy weight-quantized layer implementations for the CPU device.

* ``OpType.LinearW4A16`` -- LMDeploy's ``AwqLinear`` (checkpoints with
  ``quantization_config.quant_method == "awq"``, 4 or 8 bits). ``update_weights`` (called once after
  loading) unpacks the AWQ int32 tensors and re-lays them out for sagellm's CPU kernels
  (:mod:`sagellm.accel.kernels.cpu.quant_linear`); the module's ``qweight`` / ``scales`` / ``qzeros``
  parameters then hold that layout.
* ``OpType.LinearW8A8`` and ``OpType.RMSNormW8A8`` -- LMDeploy's SmoothQuant layers
  (``quant_method == "smooth_quant"``, int8 weight + per-channel scale). On the CPU they run
  weight-only: the norm returns float activations (the backend's plain RMSNorm) and the linear
  multiplies them with the int8 weight, so no activation quantization error is added.

LMDeploy 0.11 forces AWQ models to float16 (``_update_torch_dtype``); the kernels take any float
input dtype and return it.
"""

from __future__ import annotations

import torch
from lmdeploy.pytorch.backends.awq_modules import LinearW4A16Builder, LinearW4A16Impl
from lmdeploy.pytorch.backends.qmodules import LinearW8A8Builder, LinearW8A8Impl, RMSNormW8A8Builder

from sagellm.accel.kernels.cpu.quant_linear import (
    GroupWeight,
    group_kernel_for,
    linear_channel_int8,
    linear_group,
    prepare_channel_int8,
    prepare_group_weight,
)
from sagellm.accel.quantization.weights import AwqTensors, from_awq


def _all_reduce(out: torch.Tensor, all_reduce: bool, group) -> torch.Tensor:
    if all_reduce:
        import torch.distributed as dist

        dist.all_reduce(out, group=group)
    return out


class CpuLinearW4A16Impl(LinearW4A16Impl):
    """AWQ group-wise linear over :func:`~sagellm.accel.kernels.cpu.quant_linear.linear_group`."""

    def __init__(self, in_features: int, out_features: int, w_bit: int, group_size: int):
        if w_bit not in (4, 8):
            raise NotImplementedError(
                f"AWQ with {w_bit}-bit weights is not available on the cpu device; accepted: 4, 8"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.w_bit = w_bit
        self.group_size = group_size
        self.kernel = group_kernel_for(w_bit, out_features, in_features, group_size)

    def update_weights(self, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                       bias: torch.Tensor | None = None):
        quantized = from_awq(AwqTensors(qweight.data, qzeros.data, scales.data), self.w_bit, self.group_size)
        prepared = prepare_group_weight(quantized, self.kernel)
        return prepared.weight, prepared.scales, prepared.zeros, bias

    def forward(self, x, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                bias: torch.Tensor | None = None, all_reduce: bool = False, group=None):
        weight = GroupWeight(self.kernel, qweight, scales, qzeros, self.w_bit, self.group_size,
                             self.out_features, self.in_features)
        return _all_reduce(linear_group(x, weight, bias), all_reduce, group)


class CpuLinearW4A16Builder(LinearW4A16Builder):
    @staticmethod
    def build(in_features: int, out_features: int, w_bit: int, group_size: int, bias: bool = False,
              dtype: torch.dtype = None) -> CpuLinearW4A16Impl:
        return CpuLinearW4A16Impl(in_features, out_features, w_bit, group_size)


class CpuLinearW8A16Impl(LinearW8A8Impl):
    """SmoothQuant-layout int8 linear run weight-only (float activations)."""

    def __init__(self, in_features: int, out_features: int, quant_dtype: torch.dtype = torch.int8):
        if quant_dtype != torch.int8:
            raise NotImplementedError(
                f"SmoothQuant weights of dtype {quant_dtype} are not available on the cpu device; accepted: torch.int8"
            )
        self.in_features = in_features
        self.out_features = out_features

    def update_weights(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        prepared = prepare_channel_int8(weight.data, scale.data)
        return prepared.codes, prepared.scale, bias

    def forward(self, x, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                all_reduce: bool = False, group=None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the cpu W8 linear takes float activations, got {type(x).__name__}")
        out = linear_channel_int8(x, prepare_channel_int8(weight, scale), bias)
        return _all_reduce(out, all_reduce, group)


class CpuLinearW8A16Builder(LinearW8A8Builder):
    @staticmethod
    def build(in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = None,
              quant_dtype: torch.dtype = torch.int8) -> CpuLinearW8A16Impl:
        return CpuLinearW8A16Impl(in_features, out_features, quant_dtype)


class CpuRMSNormW8A16Builder(RMSNormW8A8Builder):
    """The norm in front of SmoothQuant linears: the cpu backend's plain RMSNorm (no activation quantization)."""

    @staticmethod
    def build(hidden_size: int, eps: float = 1e-6, quant_dtype: torch.dtype = torch.int8):
        from lmdeploy.pytorch.backends.base import OpType

        from sagellm.engines.lmdeploy.cpu.op_backend import CpuOpsBackend

        return CpuOpsBackend.get_layer_impl_builder(OpType.RMSNorm).build(hidden_size, eps)
