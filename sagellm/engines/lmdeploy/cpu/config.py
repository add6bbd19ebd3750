"""Settings of the cpu device (layered: defaults < ``SAGELLM_CPU_*`` environment, see ``sagellm.core.config``)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Optional

from sagellm.accel.kernels.cpu.linear import PACKED_MIN_ROWS
from sagellm.core.config import load_config


@dataclass(frozen=True)
class CpuDeviceConfig:
    cpu_threads: Optional[int] = field(
        default=None,
        metadata={"help": "intra-op threads of every forward (SAGELLM_CPU_THREADS); None: per forward, as many "
                          "as its work fills (small decode steps on 1 thread, prefill on every usable core)"},
    )
    cpu_gflop_per_thread: float = field(
        default=0.5,
        metadata={"help": "with cpu_threads None: a forward gets one thread per this many GFLOP of work "
                          "(at least 1, at most the usable cores less those other processes keep busy)"},
    )
    cpu_weight_mib_per_thread: float = field(
        default=64.0,
        metadata={"help": "with cpu_threads None: a forward also gets one thread per this many MiB of weights "
                          "it reads (decode of a larger model is bound by memory bandwidth, which each core "
                          "adds to); 0: threads follow the work only"},
    )
    cpu_dense_kv_mib: int = field(
        default=1024,
        metadata={"help": "MiB a decode batch's dense KV copy may take (all layers, K and V); it spares "
                          "re-gathering the paged history at every decode step; 0 turns it off"},
    )
    cpu_native_kernels: bool = field(
        default=True,
        metadata={"help": "decode attention (straight over the paged cache), float32 RMSNorm and rotary "
                          "embedding run on sagellm's C++ kernels (built once per machine with its C++ "
                          "compiler, ~3 s; without a compiler or on a failed build the torch kernels serve, "
                          "with a warning); off: torch kernels"},
    )
    cpu_packed_linear: bool = field(
        default=True,
        metadata={"help": "dense linear layers may run on oneDNN with their weights packed once (x86 CPUs; "
                          "a second copy of the linear weights in memory where it runs), at the row counts "
                          "cpu_packed_linear_measure finds it faster; off: F.linear everywhere"},
    )
    cpu_packed_linear_measure: bool = field(
        default=True,
        metadata={"help": "with cpu_packed_linear: after the model's first forward, time one pass over all of "
                          "its linear weights each way at 4-64 and 256 rows (once per model and process: 0.1 s "
                          "for the tiny model, 1.9 s for the 100M one on the Intel host) and run the packed "
                          "path only at the row counts where its pass took at most 0.95x F.linear's (its "
                          "second copy of the weights is dropped where it wins none); off: packed from "
                          "cpu_packed_linear_min_rows up"},
    )
    cpu_packed_linear_min_rows: int = field(
        default=PACKED_MIN_ROWS,
        metadata={"help": "with cpu_packed_linear: inputs of fewer rows (decode steps of 1-3 sequences) take "
                          "F.linear, whose MKL path reads the plain weight faster there (measured 1.1-1.4x); "
                          "0: every input takes the packed weight"},
    )

    def __post_init__(self) -> None:
        if self.cpu_threads is not None and (isinstance(self.cpu_threads, bool) or self.cpu_threads < 1):
            raise ValueError(f"cpu_threads must be None (auto) or >= 1, got {self.cpu_threads!r}")
        if not self.cpu_gflop_per_thread > 0:
            raise ValueError(f"cpu_gflop_per_thread must be > 0, got {self.cpu_gflop_per_thread!r}")
        if not self.cpu_weight_mib_per_thread >= 0:
            raise ValueError(f"cpu_weight_mib_per_thread must be >= 0 (0: off), got {self.cpu_weight_mib_per_thread!r}")
        if isinstance(self.cpu_packed_linear_min_rows, bool) or self.cpu_packed_linear_min_rows < 0:
            raise ValueError(f"cpu_packed_linear_min_rows must be >= 0 (0: pack every input), "
                             f"got {self.cpu_packed_linear_min_rows!r}")
        if self.cpu_dense_kv_mib < 0:
            raise ValueError(f"cpu_dense_kv_mib must be >= 0, got {self.cpu_dense_kv_mib!r}")


@functools.lru_cache(maxsize=1)
def cpu_device_config() -> CpuDeviceConfig:
    """The process's cpu device settings (read once, from the environment)."""
    return load_config(CpuDeviceConfig)


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
