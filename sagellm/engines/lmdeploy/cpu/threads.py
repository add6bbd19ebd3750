"""Intra-op threads per forward on the cpu device.

A decode step of a small model is a few hundred small ops of tens of microseconds each. Splitting
each over several OpenMP threads buys little, and on a machine whose cores are shared (CI, several
jobs on 2 cores) it costs a great deal: every parallel region waits for its slowest thread, and a
thread the kernel has descheduled stalls the op for a scheduler tick (measured: a [32, 256] x
[256, 1376] matmul takes 0.3 ms on 1 thread and 24 ms on 2 threads while another process keeps
one of the 2 cores busy). Large forwards (prefill) amortize that and gain from every core.

So a forward gets one thread per ``gflop_per_thread`` of estimated work, at least 1 and at most
the usable cores, unless the thread count is fixed. A forward of a larger model also gets one
thread per ``weight_mib_per_thread`` of weights it reads: a decode step of few tokens streams every
weight once and is bound by memory bandwidth, which grows with each core that reads. Measured on
the 2-core machine (100M-parameter Llama, float32, 367 MiB read per token, batch-1 decode, runs
alternating): 28.6 / 28.0 tokens/s on 1 thread against 42.7 / 40.3 on 2 (vLLM's CPU build: 32.9).
The tiny model's 16 MiB of weights stay on 1 thread. Either way, a forward gets no more threads
than the cores other processes left free (``BusyElsewhere``).

On the served CPU the API server and the benchmark client share the machine with the engine, and
how busy they keep the other core changes from moment to moment. Measured on the 2-core machine
(tiny model, interleaved runs):

* 2 threads for every forward from 0.05 GFLOP up, without the free-core check, cost chat at
  concurrency 32 4 % of its output throughput.
* With the check, one thread per 0.5 GFLOP against per 1.0 GFLOP gave chat at concurrency 32
  1,163 / 1,161 output tok/s against 1,066 / 1,059.
* Chat at concurrency 1 and 8, multi-turn chat and shared-document QA stayed within the runs'
  noise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

#: a forward takes a core others keep busy less than this share of the time
FREE_CORE_SLACK = 0.25


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads for a forward from its estimated work.

    Attributes:
        max_threads: usable cores (the most threads a forward gets).
        fixed: a thread count for every forward, or None for the work-based choice.
        gflop_per_thread: work that earns one more thread.
        flop_per_token: estimated FLOPs one token costs in a forward (2 x the per-token weights).
        weight_bytes: bytes of the weights every forward reads (decoder stack and LM head).
        weight_mib_per_thread: weights that earn one more thread; 0: weights earn none.
    """

    max_threads: int
    fixed: int | None = None
    gflop_per_thread: float = 1.0
    flop_per_token: float = 0.0
    weight_bytes: float = 0.0
    weight_mib_per_thread: float = 0.0

    def threads_for(self, num_tokens: int, busy_elsewhere: Callable[[], float | None] | None = None) -> int:
        """Threads for a forward of ``num_tokens`` tokens.

        ``busy_elsewhere``: cores other processes keep busy (None: unknown). It is asked only when the
        work earns more than one thread, and a core counts as free when they use less than
        ``1 - FREE_CORE_SLACK`` of it.
        """
        if self.fixed is not None:
            return self.fixed
        work = num_tokens * self.flop_per_token / (self.gflop_per_thread * 1e9)
        if self.weight_mib_per_thread > 0:
            work = max(work, self.weight_bytes / (self.weight_mib_per_thread * (1 << 20)))
        threads = max(1, min(self.max_threads, int(work)))
        if threads > 1 and busy_elsewhere is not None:
            busy = busy_elsewhere()
            if busy is not None:
                threads = max(1, min(threads, int(self.max_threads - busy + FREE_CORE_SLACK)))
        return threads


def flop_per_token(hidden_size: int, num_layers: int, intermediate_size: int, num_heads: int,
                   num_kv_heads: int, head_dim: int) -> float:
    """2 x the weights a token multiplies through a decoder stack (attention projections + gated MLP).

    The LM head is left out: LMDeploy applies it to the last token of each sequence only.
    """
    attention = hidden_size * head_dim * (2 * num_heads + 2 * num_kv_heads)  # q, o, k, v
    mlp = 3 * hidden_size * intermediate_size  # gate, up, down
    return 2.0 * num_layers * (attention + mlp)


class BusyElsewhere:
    """Cores kept busy by other processes, from ``/proc/stat`` and this process's own CPU time.

    Each call measures over the time since the previous measurement once at least ``interval_s``
    has passed, and returns the last value otherwise (the kernel counts CPU time in ticks of
    1/100 s, too coarse for one forward). None where ``/proc/stat`` cannot be read (not Linux) and
    before the first interval. The count is over every CPU of the machine: processes on cores
    outside this process's affinity mask count too, so the answer errs towards fewer threads.
    """

    def __init__(self, interval_s: float = 0.1, stat_path: str = "/proc/stat",
                 clock: Callable[[], float] = time.monotonic, own_cpu_s: Callable[[], float] = time.process_time,
                 ticks_per_s: float | None = None) -> None:
        self._interval_s = interval_s
        self._stat_path = stat_path
        self._clock = clock
        self._own_cpu_s = own_cpu_s
        self._ticks_per_s = ticks_per_s or float(os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy CPU-s, own CPU-s)
        self._value: float | None = None
        self._readable = True

    def __call__(self) -> float | None:
        if not self._readable:
            return None
        now = self._clock()
        if self._last is not None and now - self._last[0] < self._interval_s:
            return self._value
        machine_busy_s = self._machine_busy_s()
        if machine_busy_s is None:
            self._readable = False
            return None
        own_s = self._own_cpu_s()
        if self._last is not None:
            wall, machine_before, own_before = self._last
            self._value = max(0.0, ((machine_busy_s - machine_before) - (own_s - own_before)) / (now - wall))
        self._last = (now, machine_busy_s, own_s)
        return self._value

    def _machine_busy_s(self) -> float | None:
        """CPU-seconds every CPU of the machine spent busy since boot (all but idle and iowait)."""
        try:
            with open(self._stat_path, encoding="ascii") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if len(fields) < 5 or fields[0] != "cpu":
            return None
        try:
            ticks = [int(value) for value in fields[1:9]]
        except ValueError:
            return None
        ticks += [0] * (8 - len(ticks))
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
        return (user + nice + system + irq + softirq + steal) / self._ticks_per_s
