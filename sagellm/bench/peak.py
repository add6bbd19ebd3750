"""The machine's peak, measured by the runner itself, and the model's FLOPs and bytes per token.

Peak (:func:`measure_peak`, torch on the CPU, all usable cores, before any server starts):

* matmul FLOP/s: square ``n x n`` matmuls (n = 512, 1024, 2048) in float32 and bfloat16, ``2 n^3`` FLOPs
  each, the best single timing after a warmup (the best is the peak: slower timings are interference);
* memory bandwidth: ``dst.copy_(src)`` of a buffer far larger than the caches, counted as read + write
  (``2 x bytes``), best of several.

Model accounting (:func:`prefill_flops`, :func:`decode_bytes`), from ``config.json``:

* weight FLOPs per token = 2 x (matmul parameters): q/k/v/o projections, the gated MLP; the lm_head only
  for the tokens whose logits are computed (the last prompt token in a prefill, every decode step);
* attention FLOPs: a token at position p attends to p+1 keys: ``4 x p x num_heads x head_dim`` per layer
  (scores and weighted sum); a prefill of L new tokens after C cached ones sums that over its positions;
* decode bytes per step at batch 1: every matmul weight once (the embedding table is gathered, not
  streamed) + the KV cache read (2 x layers x kv_heads x head_dim x context x dtype bytes).

MFU = achieved FLOP/s / peak FLOP/s; MBU = achieved bytes/s / peak bandwidth.
"""

from __future__ import annotations

import os
import time

from sagellm.bench.peers import DTYPE_BYTES

__all__ = ["decode_bytes", "matmul_params", "measure_peak", "prefill_flops"]


def measure_peak(seconds: float = 0.75, sizes: tuple[int, ...] = (512, 1024, 2048), buffer_mib: int = 256) -> dict:
    """Peak matmul FLOP/s (float32, bfloat16) and copy bandwidth of this machine, with how they were measured."""
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops = {}
        for dtype in (torch.float32, torch.bfloat16):
            best = 0.0
            for n in sizes:
                a = torch.randn(n, n, dtype=dtype)
                b = torch.randn(n, n, dtype=dtype)
                out = torch.empty(n, n, dtype=dtype)
                torch.matmul(a, b, out=out)
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    torch.matmul(a, b, out=out)
                    best = max(best, 2 * n**3 / (time.perf_counter() - t0))
            flops[str(dtype).removeprefix("torch.")] = best
        n = buffer_mib * 2**20 // 4
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best_bw = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            dst.copy_(src)
            best_bw = max(best_bw, 2 * n * 4 / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(previous)
    return {
        "matmul_flops": flops,
        "mem_bandwidth_bytes_per_s": best_bw,
        "threads": threads,
        "method": (f"best single torch.matmul of n x n, n in {list(sizes)}, per dtype ({seconds} s per size, 2n^3 FLOPs) and "
                   f"{buffer_mib} MiB float32 copy_ (read + write bytes), {threads} threads, torch {torch.__version__}"),
    }


def matmul_params(shape: dict) -> dict[str, int]:
    """Matmul parameters per layer (all layers) and of the lm_head."""
    h, d = shape["hidden_size"], shape["head_dim"]
    q, kv = shape["num_heads"] * d, shape["num_kv_heads"] * d
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * shape["intermediate_size"]
    return {"layers": per_layer * shape["num_layers"], "lm_head": h * shape["vocab_size"]}


def _attention_flops(shape: dict, cached: int, new: int) -> float:
    # positions cached .. cached+new-1, each attending to (position + 1) keys
    first, last = cached + 1, cached + new
    keys = (first + last) * new / 2
    return 4.0 * keys * shape["num_heads"] * shape["head_dim"] * shape["num_layers"]


def prefill_flops(shape: dict, new_tokens: int, cached_tokens: int = 0) -> float:
    """FLOPs of one prefill of ``new_tokens`` after ``cached_tokens`` (logits for the last token only)."""
    p = matmul_params(shape)
    return 2.0 * p["layers"] * new_tokens + 2.0 * p["lm_head"] + _attention_flops(shape, cached_tokens, new_tokens)


def decode_flops(shape: dict, context: int) -> float:
    """FLOPs of one decode step at batch 1 with ``context`` tokens already in the KV cache."""
    p = matmul_params(shape)
    return 2.0 * (p["layers"] + p["lm_head"]) + _attention_flops(shape, context, 1)


def decode_bytes(shape: dict, context: int, dtype: str = "float32") -> float:
    """Bytes one decode step at batch 1 must read: every matmul weight once + the KV of ``context`` tokens."""
    p = matmul_params(shape)
    weights = (p["layers"] + p["lm_head"]) * DTYPE_BYTES[dtype]
    kv = 2 * shape["num_layers"] * shape["num_kv_heads"] * shape["head_dim"] * context * DTYPE_BYTES[dtype]
    return float(weights + kv)
