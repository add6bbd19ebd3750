"""sagellm.scheduler_ir: the IR of one engine step, optimizer passes, strategies and the executor the
engine seam calls. Pure: imports only the standard library and ``sagellm.core`` (no lmdeploy, no torch).
See README.md in this folder.
"""

from sagellm.scheduler_ir.builder import build_decode_plan, build_prefill_plan, node_seq_id
from sagellm.scheduler_ir.config import SchedulerConfig, StrategyOptions, to_environment
from sagellm.scheduler_ir.cost import StepCostModel
from sagellm.scheduler_ir.decisions import ENGINE_BUDGET, WaitingDecision
from sagellm.scheduler_ir.executor import PrefillStep, StepExecutor, StrategyError
from sagellm.scheduler_ir.prefill_steps import prefill_batch_size
from sagellm.scheduler_ir.rounds import RoundCut, RoundProgress, round_cut
from sagellm.scheduler_ir.passes import SplitResult, merge_kv_moves, split_long_prefills
from sagellm.scheduler_ir.snapshot import CostEstimate, EngineSnapshot, KVMoveKind, KVMoveView, SeqState, SeqView
from sagellm.scheduler_ir.strategies import STRATEGIES, SchedulingStrategy, build_strategy
from sagellm.scheduler_ir.trace import PlanTracer, read_records, trace_record

__all__ = [
    "ENGINE_BUDGET",
    "STRATEGIES",
    "CostEstimate",
    "EngineSnapshot",
    "KVMoveKind",
    "KVMoveView",
    "PlanTracer",
    "PrefillStep",
    "RoundCut",
    "RoundProgress",
    "SchedulerConfig",
    "SchedulingStrategy",
    "SeqState",
    "SeqView",
    "SplitResult",
    "StepCostModel",
    "StepExecutor",
    "StrategyError",
    "StrategyOptions",
    "WaitingDecision",
    "build_decode_plan",
    "build_prefill_plan",
    "build_strategy",
    "merge_kv_moves",
    "node_seq_id",
    "prefill_batch_size",
    "read_records",
    "round_cut",
    "split_long_prefills",
    "to_environment",
    "trace_record",
]
