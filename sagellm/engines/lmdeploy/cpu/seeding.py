"""Per-step sampling seeds without lazy-accelerator bookkeeping, on hosts with no accelerator.

LMDeploy 0.11 draws each step's sampling seed with ``torch.seed()``
(``ARSamplingStrategy.make_sampling_inputs``, once per prefill step and per decode round).
Besides reseeding the CPU generator, ``torch.seed`` seeds every accelerator module. A module that
is not initialized (on a CPU host: CUDA, XPU and MTIA) queues the call for a later
initialization together with ``traceback.format_stack()``, kept for its error messages. In the
engine's deep asyncio stack that formatting stats and reads source files on every call. py-spy
put 3.1 % of the engine process's samples in ``torch.seed`` (a stream of fresh 16-word prompts
on the 2-core CPU).

Where no accelerator is available -- none can ever be initialized in the process -- :func:`install`
replaces ``torch.seed`` by :func:`cpu_seed`, which does what is left of it: reseed the CPU
generator from a non-deterministic source and return the seed. With any accelerator present
``torch.seed`` stays as it is.
"""

from __future__ import annotations

import torch


def available_accelerators() -> list[str]:
    """The accelerator kinds ``torch.seed`` would seed that this process can use."""
    found = [name for name in ("cuda", "xpu", "mtia")
             if getattr(torch, name, None) is not None and getattr(torch, name).is_available()]
    if torch.backends.mps.is_available():
        found.append("mps")
    custom = torch._C._get_privateuse1_backend_name()
    if custom != "privateuseone":  # a registered out-of-tree device (torch_npu, torch_mlu ...)
        found.append(custom)
    return found


def cpu_seed() -> int:
    """``torch.seed()`` for a process without accelerators: reseed the CPU generator, return the seed."""
    return torch.default_generator.seed()


def install() -> bool:
    """Use :func:`cpu_seed` as ``torch.seed`` when no accelerator is available; whether it is in use."""
    if torch.seed is cpu_seed:
        return True
    if available_accelerators():
        return False
    torch.seed = cpu_seed
    return True
