"""Dense linear layers on oneDNN with the weight reordered once (x86 CPUs with MKL-DNN).

``F.linear`` on the x86 CPU build reaches MKL's sgemm, which re-reads the weight in its plain
row-major layout on every call; on the 2-core AMD EPYC reference machine it also takes MKL's
non-AVX-512 path. oneDNN's matmul over a weight reordered once into its blocked layout
(``mkldnn._reorder_linear_weight`` / ``mkldnn._linear_pointwise``, the pair ``torch.compile``'s CPU
weight freezing uses) measured 1.2-1.7x faster on one thread for the shapes a small model's
decode and prefill steps run (M = 1...2048 rows, K = 256, N = 2752, float32). Results differ
from ``F.linear`` by rounding only (relative 1e-6 in float32): the same products, summed in
another order.

Inputs of fewer than ``min_rows`` rows stay on ``F.linear``: with 1-3 rows MKL's sgemm streams the
plain weight faster than oneDNN's blocked matmul. Measured over every linear of a decode step,
weights cycled as in a forward (so read from memory, not cache), best of 4 alternating runs, on
the 2-core host of 2026-11-25 (an Intel Xeon with AVX-512; the 1.2-1.7x above was measured on
one hot weight on the AMD EPYC host, so the crossover may sit elsewhere on other CPUs: tune it
with ``SAGELLM_CPU_PACKED_LINEAR_MIN_ROWS``):

* tiny model (K = 256/1376, 16 MiB), 1 thread: 0.92 / 0.94 / 0.95 ms against 1.28 / 1.32 / 1.29 ms
  at 1 / 2 / 3 rows; at 4 rows oneDNN leads, 1.32 against 1.47 ms;
* 100M model (K = 768/2560, 367 MiB), 2 threads: 13.4 / 14.1 / 15.1 ms against 15.1 / 15.3 /
  15.5 ms at 1 / 2 / 3 rows; at 4 rows 16.7 (oneDNN) against 24.3 ms.

oneDNN builds (and JIT-compiles) a matmul for every new row count it meets, then caches it. A
decode step's row count is its batch size, a few dozen values; a prefill's is its token count,
new on nearly every step. Measured on the Intel host, 2 threads, the four linear shapes of one
tiny-model layer, 300 row counts in 100-399 each met once: 2.0-2.3 ms per layer set for building
against 2.0 ms for the matmuls themselves. So inputs of more than ``BUCKET_FROM_ROWS`` rows are
padded with zero rows up to :func:`bucket_rows` (at most 1/8 more rows, 8 sizes per doubling) and
the padding is cut off the result: a long-running server builds a bounded set of matmuls.

The reordered copy is kept beside the plain weight (other code reads the plain one: tied
embeddings, weight export, the few-row path), so packed layers cost their weights' memory a
second time.

Which path is faster depends on the CPU and on where the weights are read from: on the Intel host
F.linear ran the tiny model's 16 linears (16 MiB, cache-resident) 0.81-0.97x the packed time at
8-128 rows, while the packed path ran the 100M model's (367 MiB, read from memory) 1.2-1.7x faster
at 4-32 rows. A layer given a :class:`~sagellm.accel.kernels.cpu.linear_choice.RowChoice` takes
the packed path only for the row counts where it measured faster over the whole model (see
:mod:`sagellm.accel.kernels.cpu.linear_choice`).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sagellm.accel.kernels.cpu.linear_choice import LinearCalibration, RowChoice

#: inputs with fewer rows than this take ``F.linear`` (see the module docstring)
PACKED_MIN_ROWS = 4

#: inputs of more rows than this are padded to :func:`bucket_rows` (decode batches stay exact)
BUCKET_FROM_ROWS = 64


def bucket_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of 1/8 of the power of two at or below it (above
    :data:`BUCKET_FROM_ROWS`; at most 1/8 more), so row counts fall into 8 sizes per doubling."""
    if rows <= BUCKET_FROM_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


@functools.lru_cache(maxsize=None)
def packed_linear_dtypes() -> frozenset[torch.dtype]:
    """The weight dtypes oneDNN's packed linear runs on this machine (empty where it is missing)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(mkldnn, "_linear_pointwise"):
        return frozenset()
    dtypes = {torch.float32}
    if getattr(mkldnn, "_is_mkldnn_bf16_supported", lambda: False)():
        dtypes.add(torch.bfloat16)
    if getattr(mkldnn, "_is_mkldnn_fp16_supported", lambda: False)():
        dtypes.add(torch.float16)
    return frozenset(dtypes)


class PackedLinear:
    """``F.linear(x, weight, bias)`` through oneDNN with ``weight`` reordered on first use.

    The reordered copy belongs to one weight tensor: a different tensor (by storage address, shape
    or dtype) is reordered again, and :meth:`invalidate` drops the copy after an in-place update.
    Weights of a dtype oneDNN cannot pack here, inputs of another dtype than the weight, weights
    that require grad and inputs of fewer than ``min_rows`` rows take plain ``F.linear``.

    With a ``calibration``, the layer reports itself (with its weight) on every call until the
    calibration hands it a :class:`RowChoice` (:meth:`choose`); from then on inputs whose row count
    the choice leaves unpacked take ``F.linear`` as well.
    """

    __slots__ = ("_calibration", "_choice", "_key", "_min_rows", "_packed")

    def __init__(self, min_rows: int = PACKED_MIN_ROWS, calibration: LinearCalibration | None = None) -> None:
        if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 0:
            raise ValueError(f"min_rows must be an int >= 0 (0: pack every input), got {min_rows!r}")
        self._key: tuple | None = None
        self._packed: torch.Tensor | None = None
        self._min_rows = min_rows
        self._calibration = calibration
        self._choice: RowChoice | None = None

    @property
    def min_rows(self) -> int:
        return self._min_rows

    @property
    def choice(self) -> RowChoice | None:
        """The measured per-row-count choice, None until one is made (then packed from ``min_rows`` up)."""
        return self._choice

    def choose(self, choice: RowChoice) -> None:
        """Take the packed path only for the row counts ``choice`` packs; drops the reordered weight
        when it packs none."""
        self._choice = choice
        if not choice.packs_any:
            self.invalidate()

    @property
    def is_packed(self) -> bool:
        """Whether a reordered weight is held (the packed path has run since the last invalidate)."""
        return self._packed is not None

    def invalidate(self) -> None:
        self._key = None
        self._packed = None

    @staticmethod
    def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (
            weight.dtype in packed_linear_dtypes()
            and x.dtype == weight.dtype
            and weight.device.type == "cpu"
            and weight.dim() == 2
            and not weight.requires_grad
            and not (torch.is_grad_enabled() and x.requires_grad)
        )

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        choice = self._choice
        if choice is not None and not choice.packs_any:
            return F.linear(x, weight, bias)
        if x.numel() < self._min_rows * x.shape[-1] or not self.supports(x, weight):
            return F.linear(x, weight, bias)
        if choice is None:
            if self._calibration is not None:
                self._calibration.saw(self, weight, bias)
        elif not choice.packs(math.prod(x.shape[:-1])):
            return F.linear(x, weight, bias)
        return self.packed_linear(x, weight, bias)

    def packed_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The packed path for any row count (the caller has checked :meth:`supports`)."""
        key = (weight.data_ptr(), tuple(weight.shape), weight.dtype)
        if key != self._key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
            self._key = key
        if bias is not None and bias.dtype != weight.dtype:
            bias = bias.to(weight.dtype)
        rows = math.prod(x.shape[:-1])
        padded_rows = bucket_rows(rows)
        if padded_rows == rows:
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, bias, "none", [], "")
        padded = x.new_empty(padded_rows, x.shape[-1])
        padded[:rows] = x.reshape(rows, x.shape[-1])
        padded[rows:] = 0
        out = torch.ops.mkldnn._linear_pointwise(padded, self._packed, bias, "none", [], "")
        return out[:rows].view(*x.shape[:-1], out.shape[-1])
