"""LMDeploy ``OpsBackend`` for the CPU device: the default (pure torch) ops plus paged attention, oneDNN
packed linears and, where sagellm's native kernels built, native RMSNorm and rotary embedding."""

from __future__ import annotations

import torch
from lmdeploy.pytorch.backends.base import OpType
from lmdeploy.pytorch.backends.default import DefaultOpsBackend

from sagellm.accel.kernels.cpu import DensePlan, pack_batch
from sagellm.accel.kernels.cpu.native import native_kernels
from sagellm.engines.lmdeploy.cpu.config import cpu_device_config
from sagellm.engines.lmdeploy.cpu.step_state import (
    busy_elsewhere,
    choose_linears,
    native_decode,
    plan_step,
    thread_policy,
)

# weight-quantized layers (sagellm.engines.lmdeploy.cpu.quant_linear): AWQ W4/W8, SmoothQuant int8 run weight-only
_QUANT_BUILDERS = {
    OpType.LinearW4A16: "CpuLinearW4A16Builder",
    OpType.LinearW8A8: "CpuLinearW8A16Builder",
    OpType.RMSNormW8A8: "CpuRMSNormW8A16Builder",
}


class CpuOpsBackend(DefaultOpsBackend):
    @staticmethod
    def get_name() -> str:
        return "cpu"

    @classmethod
    def get_layer_impl_builder(cls, layer_type: OpType):
        if layer_type == OpType.PagedAttention:
            from sagellm.engines.lmdeploy.cpu.attention import CpuPagedAttentionBuilder

            return CpuPagedAttentionBuilder
        if layer_type in (OpType.RMSNorm, OpType.ApplyRotaryEmb) and cpu_device_config().cpu_native_kernels:
            kernels = native_kernels()
            if kernels is not None:
                from sagellm.engines.lmdeploy.cpu import rowwise

                return (rowwise.rms_norm_builder if layer_type == OpType.RMSNorm else rowwise.rotary_builder)(kernels)
        if layer_type == OpType.Linear and cpu_device_config().cpu_packed_linear:
            from sagellm.engines.lmdeploy.cpu.linear import CpuPackedLinearBuilder

            return CpuPackedLinearBuilder
        if layer_type in _QUANT_BUILDERS:
            from sagellm.engines.lmdeploy.cpu import quant_linear

            return getattr(quant_linear, _QUANT_BUILDERS[layer_type])
        return super().get_layer_impl_builder(layer_type)

    @staticmethod
    def get_attention_metadata_cls():
        from sagellm.engines.lmdeploy.cpu.attention import CpuAttentionMetadata

        return CpuAttentionMetadata

    @classmethod
    def update_step_context(cls, step_context):
        """Once per forward: the packed linears' row choice (after a model's first forward), thread count, attention metadata with the packed-batch indices every layer reuses,
        and how decode attention reads the history: the native kernel straight from the cache, else the layers'
        dense decode history (``sagellm.accel.kernels.cpu.dense_decode``)."""
        policy = thread_policy(step_context.model_config)
        choose_linears(policy)
        torch.set_num_threads(policy.threads_for(step_context.input_ids.numel(), busy_elsewhere()))
        q_seqlens = step_context.q_seqlens
        kv_seqlens = step_context.kv_seqlens
        q_start_loc = q_seqlens.cumsum(0) - q_seqlens
        kv_start_loc = None
        kv_flatten_size = None
        if not step_context.is_decoding:
            kv_start_loc = kv_seqlens.cumsum(0) - kv_seqlens
            kv_flatten_size = step_context.sum_kv_seqlen
        packed = pack_batch(q_seqlens, kv_seqlens, q_start_loc)
        native = native_decode(step_context, packed)
        dense, plan = (None, DensePlan.OFF) if native is not None else plan_step(step_context, packed)
        step_context.attn_metadata = cls.get_attention_metadata_cls()(
            step_context.is_decoding,
            step_context.block_offsets,
            q_start_loc=q_start_loc,
            q_seqlens=q_seqlens,
            kv_seqlens=kv_seqlens,
            kv_start_loc=kv_start_loc,
            kv_flatten_size=kv_flatten_size,
            quant_policy=step_context.kv_quant_policy,
            packed=packed,
            dense=dense,
            dense_plan=plan,
            native=native,
        )
        if step_context.cross_seqlens is not None:
            raise NotImplementedError("cross-attention (encoder-decoder) models are not available on the cpu device")
        step_context.cross_attn_metadata = None
        return step_context

    @staticmethod
    def ccl_backend() -> str:
        return "gloo"

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def support_ray() -> bool:
        return False
