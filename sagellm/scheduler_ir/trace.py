"""JSON-lines traces of the plans a scheduler made (``SAGELLM_SCHED_TRACE=path``).

One line per scheduling decision::

    {"step": 12, "kind": "prefill", "strategy": "slo_aware", "plan": {...ExecutionPlan...},
     "requests": {"7": {"request_id": "req-1", "priority": 0, "tenant": "acme", "slo_ttft_ms": 500.0, ...}},
     "order": [7, 3], "deferred": [], "rejected": {"9": "..."}, "remainders": [...], "chunk_ends": {"7": 256},
     "wall_s": 1795000000.123456}

``plan`` round-trips through ``ExecutionPlan.from_dict``; ``read_records`` gives the dicts back.
Lines are appended and flushed one at a time, so a trace survives a killed engine up to its last step.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sagellm.core.ir import ExecutionPlan, IRNode
from sagellm.core.serialization import SerializationError
from sagellm.scheduler_ir.snapshot import SeqView


def request_summary(seq: SeqView) -> dict[str, Any]:
    return {
        "request_id": seq.request_id,
        "state": seq.state.value,
        "priority": seq.priority,
        "tenant": seq.tenant,
        "slo_ttft_ms": seq.slo_ttft_ms,
        "slo_tpot_ms": seq.slo_tpot_ms,
        "computed_tokens": seq.computed_tokens,
        "pending_tokens": seq.pending_tokens,
        "generated_tokens": seq.generated_tokens,
        # wall-clock seconds, as ``wall_s``: a request's wait before this plan and its TPOT clock
        "arrival_s": seq.arrival_s,
        "first_token_s": seq.first_token_s,
    }


def trace_record(
    kind: str,
    strategy: str,
    plan: ExecutionPlan,
    seqs: Iterable[SeqView],
    *,
    order: Iterable[int] = (),
    deferred: Iterable[int] = (),
    rejected: Mapping[int, str] | None = None,
    remainders: Iterable[IRNode] = (),
    chunk_ends: Mapping[int, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    record = {
        "step": plan.step_id,
        "kind": kind,
        "strategy": strategy,
        "plan": plan.to_dict(),
        "requests": {str(s.seq_id): request_summary(s) for s in seqs},
        "order": list(order),
        "deferred": list(deferred),
        "rejected": {str(k): v for k, v in (rejected or {}).items()},
        "remainders": [n.to_dict() for n in remainders],
        "chunk_ends": {str(k): v for k, v in (chunk_ends or {}).items()},
    }
    if extra:
        record.update(extra)
    return record


class PlanTracer:
    """Appends trace records to ``path`` (created with its parent directory)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fp = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the engine's life
        self.count = 0

    def write(self, record: Mapping[str, Any]) -> None:
        # wall-clock time, to line plans up with client-side request timings
        line = json.dumps({**record, "wall_s": round(time.time(), 6)}, separators=(",", ":"), sort_keys=False)
        with self._lock:
            self._fp.write(line + "\n")
            self._fp.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            self._fp.close()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The trace's records; each ``plan`` is checked by decoding it; errors name the line."""
    records = []
    with open(path, encoding="utf-8") as fp:
        for lineno, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                ExecutionPlan.from_dict(record["plan"])
            except (ValueError, KeyError, TypeError) as exc:
                raise SerializationError(f"{path}: trace line {lineno}: {exc}") from exc
            records.append(record)
    return records
