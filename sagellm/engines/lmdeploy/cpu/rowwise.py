"""LMDeploy ``RMSNorm`` and ``ApplyRotaryEmb`` on the cpu device, over sagellm's native row kernels.

A decode step of a small model calls RMSNorm twice per layer and rotary once; LMDeploy's default
implementations are 5-10 torch ops each, and at decode sizes the per-op overhead is the whole
cost (measured under HTTP chat at concurrency 32: 9% of the engine's time). Inputs the kernels
do not take (other dtypes, a last dim that is not contiguous) go to LMDeploy's default.
"""

from __future__ import annotations

import torch
from lmdeploy.pytorch.backends.apply_rotary_emb import ApplyRotaryEmbBuilder
from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbImpl
from lmdeploy.pytorch.backends.default.norm import DefaultRMSNormImpl
from lmdeploy.pytorch.backends.norm import RMSNormBuilder

from sagellm.accel.kernels.cpu.native import NativeKernels
from sagellm.accel.kernels.cpu.native.ops import rms_norm, rms_norm_fits, rotary_fits, rotary_inplace


class CpuRMSNormImpl(DefaultRMSNormImpl):
    def __init__(self, kernels: NativeKernels, hidden_size: int, eps: float = 1e-6):
        super().__init__(hidden_size, eps)
        self.kernels = kernels

    def forward(self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor = None):
        if rms_norm_fits(x, weight, residual):
            return rms_norm(self.kernels, x, weight, self.eps, residual, check=False)
        return super().forward(x, weight, residual)


class CpuApplyRotaryEmbImpl(DefaultApplyRotaryEmbImpl):
    def __init__(self, kernels: NativeKernels):
        self.kernels = kernels

    def forward(self, query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                inplace: bool = True):
        if not (rotary_fits(query, cos, sin) and rotary_fits(key, cos, sin)):
            return super().forward(query, key, cos, sin, inplace)
        if not inplace:
            query, key = query.clone(), key.clone()
        return (rotary_inplace(self.kernels, query, cos, sin, check=False),
                rotary_inplace(self.kernels, key, cos, sin, check=False))


def rms_norm_builder(kernels: NativeKernels) -> type[RMSNormBuilder]:
    class CpuRMSNormBuilder(RMSNormBuilder):
        @staticmethod
        def build(hidden_size: int, eps: float = 1e-6):
            return CpuRMSNormImpl(kernels, hidden_size, eps)

    return CpuRMSNormBuilder


def rotary_builder(kernels: NativeKernels) -> type[ApplyRotaryEmbBuilder]:
    class CpuApplyRotaryEmbBuilder(ApplyRotaryEmbBuilder):
        @staticmethod
        def build():
            return CpuApplyRotaryEmbImpl(kernels)

    return CpuApplyRotaryEmbBuilder
