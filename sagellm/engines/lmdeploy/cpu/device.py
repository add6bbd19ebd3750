"""Registers the ``cpu`` device with the patched LMDeploy (patch 0001's device registry).

Quantized KV storage: LMDeploy 0.11's cache engine allocates ``quant_policy`` 4/8 caches in
the device spec's ``extra['kv_quant_dtype']`` (default uint8). :func:`set_kv_quant_storage`
picks it for this process -- float8 turns policy 8 into fp8 KV (same bytes per element as int8,
so LMDeploy's block arithmetic holds). ``lmdeploy serve api_server`` builds the cache engine in a
spawned engine process, which registers the device afresh: registration therefore also reads
``SAGELLM_KV_DTYPE`` (what the server exports, see ``sagellm.engines.lmdeploy.server.serve``).
"""

from __future__ import annotations

import os

import torch
from lmdeploy.pytorch.plugins import DeviceSpec, get_device_spec, register_device

from sagellm.accel.kernels.cpu.kv_quant import KV_FORMATS
from sagellm.engines.lmdeploy.cpu import seeding

CPU_DEVICE_TYPE = "cpu"
#: The KV dtype (``auto`` or a ``KV_FORMATS`` name) an engine process stores quantized KV in.
KV_DTYPE_ENV = "SAGELLM_KV_DTYPE"
_KV_QUANT_DTYPE = "kv_quant_dtype"


def _ops_backend():
    from sagellm.engines.lmdeploy.cpu.op_backend import CpuOpsBackend

    return CpuOpsBackend


def _device_module():
    from sagellm.engines.lmdeploy.cpu import device_module

    return device_module


CPU_DEVICE = DeviceSpec(
    name=CPU_DEVICE_TYPE,
    ops_backend=_ops_backend,
    device_module=_device_module,
    torch_device="cpu",
    # float32 is the exact reference dtype; bf16/fp16 run through the same torch kernels.
    dtypes=("float32", "bfloat16", "float16"),
    # KV-cache quantization: 8 = int8 or fp8, 4 = int4 (per token per head scale/zero, LMDeploy's layout).
    # The cache engine stores them in extra['kv_quant_dtype'] (set_kv_quant_storage), default torch.uint8.
    quant_policies=(0, 4, 8),
    max_batch_size=64,
    bf16_supported=True,
)


def register_cpu_device() -> None:
    if get_device_spec(CPU_DEVICE_TYPE) is None:
        register_device(CPU_DEVICE)
        seeding.install()
        kv_dtype = os.environ.get(KV_DTYPE_ENV)
        if kv_dtype:
            set_kv_quant_storage(kv_dtype, source=KV_DTYPE_ENV)


def set_kv_quant_storage(kv_dtype: str, source: str = "set_kv_quant_storage") -> None:
    """Make this process's cpu cache engines store quantized KV as ``kv_dtype``.

    ``int8`` / ``int4`` (and ``auto``, nothing quantized) keep LMDeploy's uint8; ``fp8_e4m3`` /
    ``fp8_e5m2`` store float8. Call it before the engine is built: the cache engine reads the
    dtype once, when it allocates. One dtype per process, so an int4 engine built after an fp8
    choice fails (the kernels refuse a float8 cache under policy 4).

    Raises:
        ValueError: ``kv_dtype`` is not ``auto`` or a ``KV_FORMATS`` name (``source`` names where it came from).
    """
    if kv_dtype != "auto" and kv_dtype not in KV_FORMATS:
        raise ValueError(
            f"{source}: kv_dtype got {kv_dtype!r}; accepted: one of "
            f"{', '.join(map(repr, ('auto', *KV_FORMATS)))}"
        )
    register_cpu_device()
    extra = get_device_spec(CPU_DEVICE_TYPE).extra
    if kv_dtype == "auto":
        extra.pop(_KV_QUANT_DTYPE, None)  # LMDeploy's default, uint8
    else:
        extra[_KV_QUANT_DTYPE] = KV_FORMATS[kv_dtype].storage_dtype


def kv_quant_storage() -> torch.dtype:
    """The torch dtype this process's cpu cache engines allocate quantized KV in."""
    register_cpu_device()
    return get_device_spec(CPU_DEVICE_TYPE).extra.get(_KV_QUANT_DTYPE, torch.uint8)
