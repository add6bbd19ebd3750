"""Reference CPU kernels in plain torch (float32, bfloat16, float16), vectorized across the batch."""

from sagellm.accel.kernels.cpu.paged_attention import (
    PackedBatch,
    attention_mask,
    fill_kv_cache,
    gather_kv,
    pack_batch,
    paged_attention,
)

__all__ = ["PackedBatch", "attention_mask", "fill_kv_cache", "gather_kv", "pack_batch", "paged_attention"]
