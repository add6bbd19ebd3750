"""LMDeploy ``PagedAttention`` implementation for the CPU device, over sagellm's torch kernels.

KV-cache quantization: with ``quant_policy`` 8 or 4 the engine allocates quantized caches (uint8
for int8/int4, float8 for fp8 when ``set_kv_quant_storage`` chose it) plus one
``[num_blocks, block_size, num_kv_heads, 2]`` scale/zero tensor each for K and V, and the model
passes them in as ``k_scales_zeros`` / ``v_scales_zeros``; the kernels quantize on fill and
dequantize in attention (``sagellm.accel.kernels.cpu.kv_quant``). The format follows from the
policy and the cache's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lmdeploy.pytorch.backends.attention import AttentionBuilder, AttentionImpl, AttentionMetadata

from sagellm.accel.kernels.cpu.native.attention import decode_supported, paged_decode_attention
from sagellm.accel.kernels.cpu.native.ops import rows_writable, write_rows
from sagellm.engines.lmdeploy.cpu.step_state import NativeDecode
from sagellm.accel.kernels.cpu import (
    DenseDecodeKV,
    DensePlan,
    KVQuant,
    PackedBatch,
    fill_kv_cache,
    pack_batch,
    paged_attention,
)


@dataclass
class CpuAttentionMetadata(AttentionMetadata):
    kv_start_loc: torch.Tensor = None
    kv_flatten_size: int = None
    packed: PackedBatch = None
    dense: DenseDecodeKV = None  # the engine's dense decode history, when this step uses it
    dense_plan: DensePlan = DensePlan.OFF
    native: NativeDecode = None  # this decode step's native-kernel inputs, when it uses the native kernel


class CpuPagedAttentionImpl(AttentionImpl[CpuAttentionMetadata]):
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn_metadata: CpuAttentionMetadata,
        k_scales_zeros: torch.Tensor = None,
        v_scales_zeros: torch.Tensor = None,
        learnable_sink: torch.Tensor = None,
        inplace: bool = True,
    ) -> torch.Tensor:
        quant = None
        if attn_metadata.quant_policy:
            if k_scales_zeros is None or v_scales_zeros is None:
                raise ValueError(
                    f"quant_policy={attn_metadata.quant_policy} needs the cache's k/v scale-zero tensors; "
                    "the model passed none"
                )
            quant = KVQuant(attn_metadata.quant_policy, k_scales_zeros, v_scales_zeros, cache_dtype=k_cache.dtype)
        if self.alibi:
            raise NotImplementedError("ALiBi attention is not available on the cpu device")
        packed = attn_metadata.packed
        if packed is None:
            packed = pack_batch(attn_metadata.q_seqlens, attn_metadata.kv_seqlens, attn_metadata.q_start_loc)
        has_new = key is not None and value is not None
        native = attn_metadata.native
        if has_new and native is not None and quant is None and rows_writable(key, k_cache) \
                and rows_writable(value, v_cache):
            # token_slots is int64, contiguous, one per token and bound-checked (NativeDecode)
            write_rows(native.kernels, key, k_cache, native.token_slots, check=False)
            write_rows(native.kernels, value, v_cache, native.token_slots, check=False)
        elif has_new:
            fill_kv_cache(key, value, k_cache, v_cache, attn_metadata.block_offsets, packed, quant=quant)
        if (native is not None and has_new and self.causal and packed.is_decode
                and decode_supported(query, k_cache, v_cache)):
            return paged_decode_attention(
                native.kernels, query, k_cache, v_cache, native.block_table, native.kv_seqlens,
                scale=self.scale, sliding_window=self.sliding_window,
                logit_softcapping=self.logit_softcapping, sinks=learnable_sink, tables_checked=True,
            )
        history = None
        if attn_metadata.dense is not None and attn_metadata.dense_plan is not DensePlan.OFF and has_new:
            history = attn_metadata.dense.layer_history(
                attn_metadata.dense_plan, k_cache, v_cache, key, value, attn_metadata.block_offsets,
                attn_metadata.kv_seqlens, packed, query.dtype,
            )
        return paged_attention(
            query,
            k_cache,
            v_cache,
            attn_metadata.block_offsets,
            attn_metadata.q_seqlens,
            attn_metadata.kv_seqlens,
            packed,
            scale=self.scale,
            causal=self.causal,
            sliding_window=self.sliding_window,
            logit_softcapping=self.logit_softcapping,
            sinks=learnable_sink,
            quant=quant,
            history=history,
            new_kv=(key, value) if has_new else None,
        )


class CpuPagedAttentionBuilder(AttentionBuilder[CpuAttentionMetadata]):
    @staticmethod
    def build(
        num_heads: int,
        head_size: int,
        scale: float = None,
        num_kv_heads: int = None,
        v_head_size: int = None,
        alibi: bool = False,
        sliding_window: int = None,
        logical_softcapping: float = None,
        causal: bool = True,
        use_flash_mla: bool = False,
        learnable_sink: bool = False,
        block_sparse_size: int = 1,
        **kwargs,
    ) -> CpuPagedAttentionImpl:
        if use_flash_mla:
            raise NotImplementedError("FlashMLA is CUDA-only; the cpu device cannot run this model")
        if block_sparse_size != 1:
            raise NotImplementedError("block-sparse attention is not available on the cpu device")
        return CpuPagedAttentionImpl(
            num_heads,
            head_size,
            scale=scale,
            num_kv_heads=num_kv_heads,
            v_head_size=v_head_size,
            alibi=alibi,
            sliding_window=sliding_window,
            logit_softcapping=logical_softcapping,
            causal=causal,
        )
