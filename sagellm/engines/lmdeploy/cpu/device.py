"""Registers the ``cpu`` device with the patched LMDeploy (patch 0001's device registry)."""

from __future__ import annotations

from lmdeploy.pytorch.plugins import DeviceSpec, get_device_spec, register_device

CPU_DEVICE_TYPE = "cpu"


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
    # KV-cache quantization: 8 = int8, 4 = int4 (per token per head scale/zero, LMDeploy's layout).
    # The cache engine stores codes in extra['kv_quant_dtype'], default torch.uint8 -- what our kernels expect.
    quant_policies=(0, 4, 8),
    max_batch_size=64,
    bf16_supported=True,
)


def register_cpu_device() -> None:
    if get_device_spec(CPU_DEVICE_TYPE) is None:
        register_device(CPU_DEVICE)
