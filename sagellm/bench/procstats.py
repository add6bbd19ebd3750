"""CPU time and resident memory of a server's process tree (psutil), for cost per token."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TreeSample", "sample_tree"]


@dataclass(frozen=True)
class TreeSample:
    """CPU seconds (user + system) summed over the live processes of a tree, their RSS and count."""

    cpu_s: float
    rss_bytes: int
    processes: int


def sample_tree(pid: int | None) -> TreeSample | None:
    """The tree rooted at ``pid`` (children recursively); None when ``pid`` is None or gone.

    A child that exited between two samples drops out of the sum, so take deltas across a scenario
    of a long-running server (whose processes live as long as it does).
    """
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu, rss, alive = 0.0, 0, 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
                alive += 1
        except psutil.Error:
            continue
    return TreeSample(cpu, rss, alive)
