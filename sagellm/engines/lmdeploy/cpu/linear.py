"""LMDeploy's dense ``Linear`` layer on the cpu device: oneDNN with the weight packed once.

See :mod:`sagellm.accel.kernels.cpu.linear` for the kernel and what it measured, and
:mod:`sagellm.accel.kernels.cpu.linear_choice` for the per-model choice of the row counts it runs
(made at the start of the forward after the first, ``CpuOpsBackend.update_step_context``). The cpu device
runs one rank (``CpuOpsBackend.device_count``), so a tensor-parallel reduction never reaches
this layer; if one does, LMDeploy's default implementation serves it unchanged.
"""

from __future__ import annotations

import torch
from lmdeploy.pytorch.backends.default.linear import DefaultLinearImpl
from lmdeploy.pytorch.backends.linear import LinearBuilder

from sagellm.accel.kernels.cpu.linear import PACKED_MIN_ROWS, PackedLinear
from sagellm.accel.kernels.cpu.linear_choice import LinearCalibration
from sagellm.engines.lmdeploy.cpu.config import cpu_device_config
from sagellm.engines.lmdeploy.cpu.step_state import linear_calibration


class CpuPackedLinearImpl(DefaultLinearImpl):
    def __init__(self, min_rows: int = PACKED_MIN_ROWS, calibration: LinearCalibration | None = None) -> None:
        self.packed = PackedLinear(min_rows, calibration)

    def update_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.packed.invalidate()  # called after loading and after every in-place weight update
        return weight, bias

    def forward(self, x, weight, bias=None, all_reduce=False, group=None, rank=0, scatter_size=None):
        if all_reduce:
            return super().forward(x, weight, bias, all_reduce, group=group, rank=rank, scatter_size=scatter_size)
        return self.packed(x, weight, bias)


class CpuPackedLinearBuilder(LinearBuilder):
    @staticmethod
    def build(in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = None):
        config = cpu_device_config()
        return CpuPackedLinearImpl(config.cpu_packed_linear_min_rows,
                                   linear_calibration() if config.cpu_packed_linear_measure else None)
