"""Intra-op threads per forward on the cpu device.

A decode step of a small model is a few hundred small ops of tens of microseconds each. Splitting
each over several OpenMP threads buys little, and on a machine whose cores are shared (CI, several
jobs on 2 cores) it costs a great deal: every parallel region waits for its slowest thread, and a
thread the kernel has descheduled stalls the op for a scheduler tick (measured: a [32, 256] x
[256, 1376] matmul takes 0.3 ms on 1 thread and 24 ms on 2 threads while another process keeps
one of the 2 cores busy). Large forwards (prefill) amortize that and gain from every core.

So a forward gets one thread per ``gflop_per_thread`` of estimated work, at least 1 and at most
the usable cores, unless the thread count is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads for a forward from its estimated work.

    Attributes:
        max_threads: usable cores (the most threads a forward gets).
        fixed: a thread count for every forward, or None for the work-based choice.
        gflop_per_thread: work that earns one more thread.
        flop_per_token: estimated FLOPs one token costs in a forward (2 x the per-token weights).
    """

    max_threads: int
    fixed: int | None = None
    gflop_per_thread: float = 1.0
    flop_per_token: float = 0.0

    def threads_for(self, num_tokens: int) -> int:
        if self.fixed is not None:
            return self.fixed
        work = num_tokens * self.flop_per_token / (self.gflop_per_thread * 1e9)
        return max(1, min(self.max_threads, int(work)))


def flop_per_token(hidden_size: int, num_layers: int, intermediate_size: int, num_heads: int,
                   num_kv_heads: int, head_dim: int) -> float:
    """2 x the weights a token multiplies through a decoder stack (attention projections + gated MLP).

    The LM head is left out: LMDeploy applies it to the last token of each sequence only.
    """
    attention = hidden_size * head_dim * (2 * num_heads + 2 * num_kv_heads)  # q, o, k, v
    mlp = 3 * hidden_size * intermediate_size  # gate, up, down
    return 2.0 * num_layers * (attention + mlp)
