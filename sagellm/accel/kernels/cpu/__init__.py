"""Reference CPU kernels in plain torch (float32, bfloat16, float16), vectorized across the batch."""

from sagellm.accel.kernels.cpu.dense_decode import DenseDecodeKV, DensePlan
from sagellm.accel.kernels.cpu.kv_quant import (
    KV_FORMATS,
    QUANT_POLICY_BITS,
    KVFormat,
    KVQuant,
    dequantize_kv,
    kv_format,
    kv_format_of,
    quantize_kv,
)
from sagellm.accel.kernels.cpu.paged_attention import (
    PackedBatch,
    attention_mask,
    fill_kv_cache,
    gather_dequantized,
    gather_history,
    gather_kv,
    pack_batch,
    paged_attention,
)

__all__ = [
    "DenseDecodeKV",
    "DensePlan",
    "KVFormat",
    "KVQuant",
    "KV_FORMATS",
    "PackedBatch",
    "QUANT_POLICY_BITS",
    "attention_mask",
    "dequantize_kv",
    "fill_kv_cache",
    "gather_dequantized",
    "gather_history",
    "gather_kv",
    "kv_format",
    "kv_format_of",
    "pack_batch",
    "paged_attention",
    "quantize_kv",
]
