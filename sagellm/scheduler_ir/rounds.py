"""When a decode round should end before its last loop.

LMDeploy 0.11 schedules decoding in rounds of ``prefill_interval`` (16) forwards and admits new
requests only between rounds. Inside a round the batch is fixed: a sequence that stops (EOS, its
token limit) is still computed to the round's end, and a request that arrives waits for that end
before its prefill can start. At concurrency 1 that is up to 15 wasted forwards between one
request's last token and the next request's prefill; under load, finished slots stay empty and
new requests wait for up to a round.

Patch 0004 lets the engine end a round after any loop (``cut_round`` / ``end_round``); this module
decides when. Ending a round costs one scheduling pass that the next round would have needed
anyway, plus, when the round ends to let requests in, one prefill step earlier and smaller than
it would have been.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RoundCut(str, Enum):
    """Why a round ends early."""

    ALL_FINISHED = "all_finished"  # every sequence of the round stopped: the rest would be wasted
    ADMIT_WAITING = "admit_waiting"  # a request waits and the batch has room for it


@dataclass(frozen=True)
class RoundProgress:
    """A decode round after the outputs of some of its loops.

    Attributes:
        loops_done: loops whose outputs are in (1 after the first).
        loops: loops the round was scheduled for.
        batch: sequences in the round.
        finished: of them, the ones that stopped.
        waiting: requests waiting for a prefill that might admit them.
        max_batch: the engine's most sequences per batch.
    """

    loops_done: int
    loops: int
    batch: int
    finished: int
    waiting: int
    max_batch: int

    @property
    def live(self) -> int:
        """Sequences of the round still generating."""
        return self.batch - self.finished

    @property
    def loops_left(self) -> int:
        return self.loops - self.loops_done

    @property
    def room(self) -> int:
        """Sequences the next batch could take beyond the round's live ones."""
        return self.max_batch - self.live


def round_cut(progress: RoundProgress, saved_loops_per_live: float = 1.0) -> RoundCut | None:
    """Why the round should end after its loops done so far, or None to go on.

    A round whose sequences all stopped ends at once. For waiting requests it ends when the
    sequence-loops they would otherwise sit out (those that fit in the batch, times the loops
    left) reach ``saved_loops_per_live`` times the round's live sequences; the default 1 is at
    least one whole loop of the batch, 0 ends the round for any request that fits. Every cut
    for them adds a prefill step that stalls the whole batch (on the 2-core CPU, cutting for any
    single waiting request cost chat at concurrency 32 about 10% of its output throughput, against
    none with this rule).
    """
    if progress.loops_done >= progress.loops or progress.batch <= 0:
        return None
    if progress.finished >= progress.batch:
        return RoundCut.ALL_FINISHED
    joining = min(progress.waiting, progress.room)
    if joining > 0 and joining * progress.loops_left >= saved_loops_per_live * progress.live:
        return RoundCut.ADMIT_WAITING
    return None
