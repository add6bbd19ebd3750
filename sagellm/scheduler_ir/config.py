"""Which scheduling strategy an engine runs and its options (file < ``SAGELLM_*`` env < flag).

``SAGELLM_SCHEDULER=slo_aware``, ``SAGELLM_SCHED_TRACE=/tmp/plans.jsonl``, ... or the
``scheduler:`` / ``sched_*:`` keys of ``configs/engines/sagellm.yaml``, or ``sage llm engine
start --scheduler slo_aware``. The engine process reads the variables (the server hands its
resolved config down through them, ``to_environment``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from sagellm.core.validation import check_choice, check_float, check_int, check_str, invalid

UNATTAINABLE_ACTIONS = ("reject", "defer")


@dataclass(frozen=True)
class StrategyOptions:
    """Knobs of the strategies (each strategy reads the ones it needs).

    Attributes:
        aging_s: priority: waiting this long improves a request's priority by 1 (0: no aging).
        chunk_tokens: slo_aware/adaptive: most prefill tokens of one long prompt per step (0: never split).
        on_unattainable: slo_aware: what to do with a request that cannot meet its SLO.
        max_defer_s: slo_aware with ``defer``: a request deferred this long is rejected.
        default_ttft_ms: slo_aware: deadline used to order requests that carry no TTFT SLO.
        tenant_weights: fair: tenant -> weight (default 1; '' is the anonymous tenant).
        decode_pacing: slo_aware: requests with time to spare may sit out decode rounds (``hold_from_round``).
        tpot_reserve: slo_aware: share of each TPOT allowance a prefill step may not stall into (held
            against the error of the step cost estimates).
    """

    aging_s: float = 5.0
    chunk_tokens: int = 0
    on_unattainable: str = "reject"
    max_defer_s: float = 30.0
    default_ttft_ms: float = 10_000.0
    tenant_weights: dict[str, float] = field(default_factory=dict)
    decode_pacing: bool = False
    tpot_reserve: float = 0.1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "aging_s", self.aging_s, minimum=0.0)
        check_int(owner, "chunk_tokens", self.chunk_tokens, minimum=0)
        check_choice(owner, "on_unattainable", self.on_unattainable, UNATTAINABLE_ACTIONS)
        check_float(owner, "max_defer_s", self.max_defer_s, positive=True)
        check_float(owner, "default_ttft_ms", self.default_ttft_ms, positive=True)
        check_float(owner, "tpot_reserve", self.tpot_reserve, minimum=0.0)
        if self.tpot_reserve > 0.9:
            raise invalid(owner, "tpot_reserve", self.tpot_reserve, "a share from 0 to 0.9")
        if not isinstance(self.decode_pacing, bool):
            raise invalid(owner, "decode_pacing", self.decode_pacing, "a boolean")
        if not isinstance(self.tenant_weights, dict):
            raise invalid(owner, "tenant_weights", self.tenant_weights, "a mapping tenant -> weight > 0")
        for tenant, weight in self.tenant_weights.items():
            check_str(owner, "tenant_weights", tenant, allow_empty=True)
            check_float(owner, "tenant_weights", weight, positive=True)

    def weight(self, tenant: str | None) -> float:
        return float(self.tenant_weights.get(tenant or "", 1.0))


@dataclass(frozen=True)
class SchedulerConfig:
    scheduler: str = field(
        default="fifo",
        metadata={"help": "scheduling strategy: fifo (LMDeploy's own FCFS), priority, slo_aware, fair, adaptive"},
    )
    sched_trace: Optional[str] = field(
        default=None, metadata={"help": "append every scheduling plan to this JSON-lines file (debugging)"}
    )
    sched_aging_s: float = field(
        default=5.0, metadata={"help": "priority: seconds of waiting that improve a request's priority by 1 (0: off)"}
    )
    sched_chunk_tokens: int = field(
        default=0,
        metadata={"help": "slo_aware/adaptive: most prefill tokens of one long prompt per step (0: never split; "
                          "splitting pays where a step's fixed cost is small against a chunk's compute, e.g. GPUs)"},
    )
    sched_on_unattainable: Literal["reject", "defer"] = field(
        default="reject",
        metadata={"help": "slo_aware: reject (HTTP 503 with the reason) or defer a request that cannot meet its SLO"},
    )
    sched_tenant_weights: dict[str, float] = field(
        default_factory=dict, metadata={"help": "fair: tenant=weight pairs, e.g. gold=4,free=1 (default weight 1)"}
    )
    sched_decode_loops: int = field(
        default=0,
        metadata={"help": "decode steps per scheduling round (LMDeploy's prefill_interval; new requests are admitted "
                          "only between rounds); 0: LMDeploy's 16"},
    )
    sched_round_cut: bool = field(
        default=True,
        metadata={"help": "end a decode round early once every sequence in it finished, or when waiting requests "
                          "fit in the batch and the loops they would sit out outweigh a prefill (slo_aware: any "
                          "that fits); false: LMDeploy's fixed rounds, always run to their last loop"},
    )
    sched_prefill_split: bool = field(
        default=True,
        metadata={"help": "take waiting requests into separate prefill steps when, by the step cost model, that "
                          "gets first tokens out sooner in all (where prefill compute outweighs a step's fixed "
                          "cost, e.g. the CPU; under load the engine's batching stands); false: LMDeploy's one "
                          "step for every request that fits"},
    )
    sched_decode_pacing: bool = field(
        default=False,
        metadata={"help": "slo_aware: a running request whose TPOT target has time to spare sits out a decode "
                          "round that requests with tighter targets would miss theirs in (its long history "
                          "slows every loop); off by default: no goodput gain measured on the 2-core CPU"},
    )
    sched_tpot_reserve: float = field(
        default=0.1,
        metadata={"help": "slo_aware: share (0-0.9) of a running request's TPOT allowance that prefill steps may "
                          "not stall into, against the error of the step cost estimates (0: plan to the limit)"},
    )

    def __post_init__(self) -> None:
        from sagellm.scheduler_ir.strategies import STRATEGIES

        if self.scheduler not in STRATEGIES:
            raise ValueError(f"scheduler: got {self.scheduler!r}; accepted: {', '.join(STRATEGIES.names())}")
        if self.sched_trace is not None:
            check_str(type(self).__name__, "sched_trace", self.sched_trace)
        check_int(type(self).__name__, "sched_decode_loops", self.sched_decode_loops, minimum=0)
        self.options()

    def decode_loops(self) -> int | None:
        """Decode steps per round for the engine config; None: keep LMDeploy's default."""
        if self.sched_decode_loops > 0:
            return self.sched_decode_loops
        from sagellm.scheduler_ir.strategies import STRATEGIES

        return STRATEGIES.get(self.scheduler).decode_loops

    def options(self) -> StrategyOptions:
        return StrategyOptions(
            aging_s=self.sched_aging_s,
            chunk_tokens=self.sched_chunk_tokens,
            on_unattainable=self.sched_on_unattainable,
            tenant_weights=dict(self.sched_tenant_weights),
            decode_pacing=self.sched_decode_pacing,
            tpot_reserve=self.sched_tpot_reserve,
        )


def to_environment(config: SchedulerConfig) -> dict[str, str]:
    """The ``SAGELLM_*`` variables that hand ``config`` to the engine process (the plugin reads them)."""
    from sagellm.core.config import env_name

    env = {
        env_name("scheduler"): config.scheduler,
        env_name("sched_aging_s"): repr(float(config.sched_aging_s)),
        env_name("sched_chunk_tokens"): str(config.sched_chunk_tokens),
        env_name("sched_on_unattainable"): config.sched_on_unattainable,
        env_name("sched_tenant_weights"): ",".join(f"{k}={v!r}" for k, v in sorted(config.sched_tenant_weights.items())),
        env_name("sched_decode_loops"): str(config.sched_decode_loops),
        env_name("sched_round_cut"): "true" if config.sched_round_cut else "false",
        env_name("sched_prefill_split"): "true" if config.sched_prefill_split else "false",
        env_name("sched_decode_pacing"): "true" if config.sched_decode_pacing else "false",
        env_name("sched_tpot_reserve"): repr(float(config.sched_tpot_reserve)),
    }
    if config.sched_trace:
        env[env_name("sched_trace")] = config.sched_trace
    return env
