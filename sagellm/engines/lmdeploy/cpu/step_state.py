"""Per-forward choices of the cpu device that depend on state kept across steps.

* :func:`thread_policy`: intra-op threads of a forward (``threads.py``), from the model's shape
  and ``CpuDeviceConfig``; :func:`busy_elsewhere` caps them at the cores other processes leave free.
* :func:`native_decode`: whether a decode forward's attention runs on the native kernel straight
  over the paged cache (``sagellm.accel.kernels.cpu.native``); such a step keeps no dense copy.
* :func:`linear_calibration`: the packed linears that ran without a measured row choice, decided
  together between forwards (``sagellm.accel.kernels.cpu.linear_choice``).
* :func:`plan_step`: otherwise, whether this forward's layers append to, rebuild, or skip their dense decode
  history (``sagellm.accel.kernels.cpu.dense_decode``). One :class:`DenseDecodeKV` per engine KV
  cache, found by the cache tensor's identity and dropped once the cache is gone.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from sagellm.accel.kernels.cpu import DenseDecodeKV, DensePlan, PackedBatch
from sagellm.accel.kernels.cpu.linear_choice import LinearCalibration
from sagellm.accel.kernels.cpu.native import NativeKernels, native_kernels
from sagellm.accel.kernels.cpu.native.attention import decode_tables_checked
from sagellm.accel.kernels.cpu.native.ops import token_slots_checked
from sagellm.accel.kernels.cpu.packed_batch import token_cache_slots
from sagellm.engines.lmdeploy.cpu.config import cpu_device_config, usable_cores
from sagellm.engines.lmdeploy.cpu.threads import BusyElsewhere, ThreadPolicy, flop_per_token

_MIB = 1 << 20

# first layer's K cache data pointer -> (weak reference to that tensor, its engine's dense history)
_dense_by_cache: dict[int, tuple[weakref.ref, DenseDecodeKV]] = {}
_policies: dict[tuple, ThreadPolicy] = {}
_busy_elsewhere: BusyElsewhere | None = None
_linear_calibration = LinearCalibration()


@dataclass(frozen=True)
class NativeDecode:
    """What every layer of a decode forward passes the native kernels, checked once per step: int32
    block table and lengths (the table covers every history), and the cache slot of each new token
    (int64, inside the cache)."""

    kernels: NativeKernels
    block_table: torch.Tensor
    kv_seqlens: torch.Tensor
    token_slots: torch.Tensor


def thread_policy(model_config) -> ThreadPolicy:
    """The thread policy of a model (LMDeploy ``ModelConfig``), memoized by its shape and dtype."""
    hf = getattr(model_config, "hf_config", None)
    hidden = model_config.hidden_size
    shape = (
        hidden,
        model_config.num_layers,
        getattr(hf, "intermediate_size", None) or 4 * hidden,
        model_config.num_attention_heads,
        model_config.num_key_value_heads,
        model_config.head_dim,
    )
    dtype = getattr(model_config, "dtype", None) or torch.float32
    vocab = getattr(model_config, "vocab_size", None) or getattr(hf, "vocab_size", None) or 0
    key = (*shape, dtype, vocab)
    policy = _policies.get(key)
    if policy is None:
        config = cpu_device_config()
        per_token = flop_per_token(*shape)
        policy = _policies[key] = ThreadPolicy(
            max_threads=usable_cores(),
            fixed=config.cpu_threads,
            gflop_per_thread=config.cpu_gflop_per_thread,
            flop_per_token=per_token,
            weight_bytes=(per_token / 2 + hidden * vocab) * dtype.itemsize,
            weight_mib_per_thread=config.cpu_weight_mib_per_thread,
        )
    return policy


def busy_elsewhere() -> BusyElsewhere:
    """This process's measure of the cores other processes keep busy (one for the process)."""
    global _busy_elsewhere
    if _busy_elsewhere is None:
        _busy_elsewhere = BusyElsewhere()
    return _busy_elsewhere


def linear_calibration() -> LinearCalibration:
    """The process's collector of packed linears awaiting their measured row choice."""
    return _linear_calibration


def choose_linears(policy: ThreadPolicy) -> None:
    """Choose for the packed linears the last forward ran undecided: a model's first forward reaches
    its decoder's linears, timed at each row count on the threads such a forward gets; layers that
    first run later take that model's choice (the policy, memoized by the model's shape, names it)."""
    if _linear_calibration.pending:
        _linear_calibration.decide(policy.threads_for, key=policy)


def dense_history(kv_caches) -> DenseDecodeKV | None:
    """The dense decode history of the engine owning ``kv_caches`` (None when turned off)."""
    budget = cpu_device_config().cpu_dense_kv_mib * _MIB
    if budget <= 0 or not kv_caches:
        return None
    first = kv_caches[0][0]
    for key in [k for k, (ref, _) in _dense_by_cache.items() if ref() is None]:
        del _dense_by_cache[key]  # that engine's cache is gone
    entry = _dense_by_cache.get(first.data_ptr())
    if entry is None or entry[0]() is not first:
        entry = _dense_by_cache[first.data_ptr()] = (weakref.ref(first), DenseDecodeKV(budget_bytes=budget))
    return entry[1]


def native_decode(step_context, packed: PackedBatch) -> NativeDecode | None:
    """The native decode-attention inputs of this forward, or None (not a decode step, quantized KV,
    native kernels off or unavailable)."""
    if not packed.is_decode or step_context.kv_quant_policy or not cpu_device_config().cpu_native_kernels:
        return None
    kernels = native_kernels()
    if kernels is None:
        return None
    k_cache = step_context.kv_caches[0][0]  # every layer's cache has the same blocks
    table, lengths = decode_tables_checked(step_context.block_offsets, step_context.kv_seqlens, k_cache.size(1))
    slots = token_cache_slots(packed, step_context.block_offsets, k_cache.size(1))  # the table covers them
    return NativeDecode(
        kernels=kernels,
        block_table=table,
        kv_seqlens=lengths,
        token_slots=token_slots_checked(slots, k_cache),
    )


def plan_step(step_context, packed: PackedBatch) -> tuple[DenseDecodeKV | None, DensePlan]:
    """(dense history, plan) for this forward; quantized KV caches always gather."""
    kv_caches = step_context.kv_caches
    dense = None if step_context.kv_quant_policy else dense_history(kv_caches)
    if dense is None:
        return None, DensePlan.OFF
    itemsize = step_context.model_config.dtype.itemsize
    per_position = sum(k.shape[2] * k.shape[3] + v.shape[2] * v.shape[3] for k, v, *_ in kv_caches) * itemsize
    plan = dense.plan(packed, step_context.block_offsets, step_context.kv_seqlens, kv_caches[0][0].size(1),
                      per_position, last_k_cache=kv_caches[-1][0])
    return dense, plan
