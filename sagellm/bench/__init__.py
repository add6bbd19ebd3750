"""sagellm.bench: the benchmark runner behind ``sage bench`` and ``benchmarks/``.

Drives OpenAI-compatible endpoints (or starts sagellm, stock LMDeploy and vLLM servers on the same
model and machine), runs seeded local workloads with closed-loop or Poisson load, measures latency,
throughput, cost and efficiency, writes versioned JSON + Markdown + PNG reports, and gates runs
against a committed baseline. See README.md in this directory.

Importing this package has no side effects and imports nothing heavy (no torch, no lmdeploy).
"""

SCHEMA_VERSION = "sagellm-bench/1"
