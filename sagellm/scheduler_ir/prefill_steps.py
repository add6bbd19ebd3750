"""How many waiting requests one prefill step takes.

LMDeploy takes every waiting request that fits the token budget into one prefill step. That suits a
device whose step time is mostly fixed cost: on a GPU a few hundred more prompt tokens barely change
the step. Where compute dominates, as on the CPU, every request of a step gets its first token only
when the whole step ends.

An example on the 2-core CPU (tiny model, multi-turn chat at concurrency 3, turns arriving together):
the first follow-up turn was prefilled alone in 35 ms, and the other two together in one step, so both
got their first token after about 95 ms. One step each would have given 35, 70 and 105 ms, a median
of 70 instead of 95.

The rule, for a step that already holds n requests and the next candidate j:

* taking j in delays those n by j's compute c_j;
* leaving j for the next step costs one more step's fixed cost f to j itself, to every request
  waiting behind it (w), and to every running request (r), whose next decode waits one step more.

So j joins iff ``n * c_j < f * (1 + w + r)``. Under load (many running requests) that is almost always
true, and the engine's batching stands. f and the per-token cost come from the step cost model.

c_j is the per-token cost times j's pending tokens, counted before prefix matching. It is therefore
an upper bound when j's prompt is cached, which biases the rule towards a separate step. That step
costs one fixed cost f.
"""

from __future__ import annotations

from collections.abc import Sequence

from sagellm.scheduler_ir.snapshot import CostEstimate


def prefill_batch_size(pending_tokens: Sequence[int], running: int, cost: CostEstimate) -> int:
    """How many of the waiting requests, in admission order, the next prefill step takes (see the module docstring).

    Args:
        pending_tokens: tokens each waiting request would prefill, in the order they are admitted.
        running: requests decoding meanwhile (their next token waits for every prefill step).
        cost: the step cost model's estimate. Before any prefill step has been observed
            (``prefill_floor_ms_per_token`` 0), or while the fit puts the fixed cost at 0, every
            request is taken (the engine's own batching).
    """
    count = len(pending_tokens)
    if count < 2 or cost.prefill_floor_ms_per_token <= 0 or cost.prefill_fixed_ms <= 0:
        return count  # nothing learned yet, or a fit with no fixed cost (no step's cost is really that)
    for admitted in range(1, count):
        behind = count - admitted - 1
        delay_to_admitted = admitted * cost.prefill_ms_per_token * max(1, pending_tokens[admitted])
        if delay_to_admitted >= cost.prefill_fixed_ms * (1 + behind + max(0, running)):
            return admitted
    return count
