#!/usr/bin/env python3
"""Accuracy guard: quantized KV cache (int8 / int4 / fp8) and quantized weights vs float, through the real engine.

Runs LMDeploy's pipeline on the cpu device over one model and measures, for each quantized KV dtype
(``PytorchEngineConfig(device_type='cpu', quant_policy=8 | 4)``; fp8_e4m3 / fp8_e5m2 are policy 8
with float8 storage, ``set_kv_quant_storage``) and each weight format
(``--weight-formats``: the model quantized with ``sage quantize``'s library into a temporary
directory) against the float engine (metrics: ``sagellm.accel.quantization.accuracy``):

* greedy agreement -- ``--prompts`` prompts from ``sagellm.models.corpus.sample_prompts``, each
  continued greedily for ``--new-tokens`` tokens (ignore_eos), compared position by position;
* teacher-forced agreement -- argmax agreement when both engines read prompt + the float
  engine's continuation in one prefill;
* perplexity -- ``--ppl-docs`` held-out documents from ``sagellm.models.corpus.generate_corpus``
  (a seed the tokenizer was not trained on), each cut to ``--ppl-tokens`` tokens.

Writes JSON + Markdown (``--out``) and exits 1 when a threshold given on the command line fails::

    python scripts/accuracy_guard.py --model /path/to/model --min-greedy-agreement int8=0.99
    python scripts/accuracy_guard.py          # the default embedded model (sagellm.models.tiny)
    python scripts/accuracy_guard.py --train-steps 120    # ... trained briefly on the corpus first
    python scripts/accuracy_guard.py --kv-dtypes '' --weight-formats awq-w4,w8 --train-steps 120

LMDeploy runs AWQ checkpoints in float16 whatever ``--dtype`` says; when an AWQ format is measured
the guard adds a control row ``none@float16`` (the float checkpoint run in float16) so the
weight rounding and the float16 arithmetic can be told apart.

The engines run one after the other in this process (the float one first), each closed before
the next starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from sagellm.accel.quantization.accuracy import (  # noqa: E402
    AccuracyThresholds,
    AgreementMetrics,
    KVAccuracyReport,
    WeightAccuracyReport,
    argmax_agreement,
    first_divergence,
    greedy_agreement,
    perplexity,
    target_argmax_agreement,
)
from sagellm.core.quant import QuantizationProfile  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
PPL_CORPUS_SEED = 1_000_003  # held out: tiny tokenizers are trained on corpus seed 0
TRAIN_CORPUS_SEED = 2_000_003  # --train-steps text, disjoint from the perplexity documents


@dataclass(frozen=True)
class GuardConfig:
    """Workload and engine settings of one guard run."""

    model: str
    kv_dtypes: tuple[str, ...] = ("int8", "int4", "fp8_e4m3", "fp8_e5m2")
    weight_formats: tuple[str, ...] = ()
    group_size: int = 128
    prompts: int = 32
    new_tokens: int = 64
    prompt_seed: int = 0
    ppl_docs: int = 16
    ppl_tokens: int = 128
    dtype: str = "float32"
    block_size: int = 16
    num_gpu_blocks: int = 1024
    max_batch_size: int = 32
    engine_overrides: dict = field(default_factory=dict)


@dataclass
class GuardResult:
    config: GuardConfig
    reports: dict[str, AgreementMetrics]
    reference_self_agreement: float
    timings_s: dict[str, float]

    def to_dict(self) -> dict:
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.__dict__.items()}
        return {
            "config": config,
            "reference_self_agreement": self.reference_self_agreement,
            "reports": {name: report.to_dict() for name, report in self.reports.items()},
            "timings_s": self.timings_s,
        }


# --------------------------------------------------------------------------- engine access


def build_pipeline(cfg: GuardConfig, kv_dtype: str = "auto"):
    """A cpu pipeline with KV in ``kv_dtype`` (``auto``: the model dtype)."""
    from lmdeploy import PytorchEngineConfig, pipeline

    from sagellm.engines.lmdeploy.cpu.device import set_kv_quant_storage

    set_kv_quant_storage(kv_dtype)  # the cache engine reads the storage dtype when it allocates
    engine = dict(
        device_type="cpu",
        dtype=cfg.dtype,
        block_size=cfg.block_size,
        session_len=4096,
        num_gpu_blocks=cfg.num_gpu_blocks,
        max_batch_size=cfg.max_batch_size,
        eager_mode=True,
        enable_prefix_caching=False,
        quant_policy=QuantizationProfile(kv_dtype=kv_dtype).lmdeploy_quant_policy("cpu"),
    )
    engine.update(cfg.engine_overrides)
    return pipeline(cfg.model, backend_config=PytorchEngineConfig(**engine), log_level="ERROR")


def greedy_tokens(pipe, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts, all submitted at once.

    ``batch_infer`` takes text only; token ids go through the request path it uses
    (``AsyncEngine.generate(input_ids=...)``), as ``benchmarks/cpu_throughput.py`` does.
    """
    from lmdeploy import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    requests = (
        dict(messages=None, input_ids=ids, gen_config=gen, session_id=next(pipe._session_id),
             sequence_start=True, sequence_end=True, stream_response=False, do_preprocess=False)
        for ids in prompt_ids
    )
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for i, stream in enumerate(pipe._infer(requests, multiplex=False)):
        for response in stream:
            outputs[i].extend(response.token_ids or [])
    return outputs


def sequence_logits(pipe, sequences: list[list[int]]) -> list:
    """Logits ``[len(seq), vocab]`` of each sequence read in one prefill (what ``pipe.get_ppl`` uses)."""
    return pipe._run(coro=pipe._async_get_logits(input_ids=sequences)).result()


# --------------------------------------------------------------------------- optional: a briefly trained model


def fit_on_corpus(model_dir: str, out_dir: str, steps: int, *, batch: int = 8, seq_len: int = 64,
                  lr: float = 3e-3, seed: int = 0) -> str:
    """Train ``model_dir`` for ``steps`` AdamW steps on the local corpus; write the result to ``out_dir``.

    A random-weight model has near-tied logits everywhere (perplexity above its vocabulary size),
    so any perturbation of the KV cache -- even rounding it to bf16 -- flips many argmaxes. About
    a hundred steps on the corpus (the tiny model: ~15 s on 2 cores, perplexity ~15000 -> ~180)
    give a model whose agreement numbers mean something. The corpus seed differs from both the
    tokenizer's and the perplexity documents'.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sagellm.models.corpus import iter_corpus

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids: list[int] = []
    for text in iter_corpus(max(200, steps * batch * seq_len // 100), seed=TRAIN_CORPUS_SEED):
        ids += tokenizer(text).input_ids
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    torch.set_flush_denormal(True)  # tiny gradients turn denormal and make CPU steps ~3x slower
    try:
        for _ in range(steps):
            starts = torch.randint(0, data.numel() - seq_len - 1, (batch,)).tolist()
            inputs = torch.stack([data[i: i + seq_len] for i in starts])
            model(input_ids=inputs, labels=inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_flush_denormal(False)  # torch's default; the engines measured next must not see the change
    model.eval()
    model.save_pretrained(out_dir)
    for path in Path(model_dir).iterdir():  # tokenizer and generation config (not the tiny-model manifest)
        if path.name.startswith(("tokenizer", "special_tokens_map", "generation_config")):
            shutil.copy(path, Path(out_dir) / path.name)
    return out_dir


# --------------------------------------------------------------------------- workload


def make_prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    from sagellm.models.corpus import sample_prompts

    return [tokenizer.encode(text, add_bos=True) for text in sample_prompts(count, seed=seed)]


def make_ppl_corpus(tokenizer, docs: int, tokens: int) -> list[list[int]]:
    """``docs`` held-out documents of exactly ``tokens`` tokens (BOS first); shorter documents are skipped."""
    from sagellm.models.corpus import iter_corpus

    out: list[list[int]] = []
    for text in iter_corpus(docs * 20, seed=PPL_CORPUS_SEED):
        ids = tokenizer.encode(text, add_bos=True)
        if len(ids) >= tokens:
            out.append(ids[:tokens])
            if len(out) == docs:
                return out
    raise RuntimeError(f"the corpus gave only {len(out)} documents of >= {tokens} tokens; lower --ppl-tokens")


# --------------------------------------------------------------------------- measurement


def _continuation_logits(logits: list, prompt_ids: list[list[int]], new_tokens: int) -> list:
    """Rows that predict the continuation: position ``len(prompt) - 1 + j`` predicts token ``j``."""
    return [row[len(p) - 1: len(p) - 1 + new_tokens].float() for row, p in zip(logits, prompt_ids)]


def _run_engine(cfg: GuardConfig, kv_dtype: str, prompts, teacher_seqs, ppl_docs):
    """(greedy continuations, teacher-forcing sequences, their continuation logits, corpus logits) of one engine.

    ``teacher_seqs`` None: teacher-force on this engine's own prompt + continuation (the float reference).
    """
    pipe = build_pipeline(cfg, kv_dtype)
    try:
        generated = greedy_tokens(pipe, prompts, cfg.new_tokens)
        sequences = teacher_seqs if teacher_seqs is not None else [p + g for p, g in zip(prompts, generated)]
        forced = _continuation_logits(sequence_logits(pipe, sequences), prompts, cfg.new_tokens)
        ppl_logits = [row[:-1].float() for row in sequence_logits(pipe, ppl_docs)]
    finally:
        pipe.close()
    return generated, sequences, forced, ppl_logits


def _metrics(cfg, generated, forced, ppl_logits, *, reference, prompts, ppl_targets, ref_forced,
             reference_ppl) -> dict:
    """The ``AgreementMetrics`` fields of one quantized engine's outputs vs the float engine's."""
    divergence = [cfg.new_tokens if d is None else d for d in first_divergence(reference, generated)]
    return dict(
        prompts=len(prompts),
        new_tokens=cfg.new_tokens,
        greedy_agreement=greedy_agreement(reference, generated).rate,
        identical_sequences=sum(int(a == b) for a, b in zip(reference, generated)),
        mean_first_divergence=statistics.fmean(divergence),
        teacher_forced_agreement=argmax_agreement(ref_forced, forced).rate,
        reference_perplexity=reference_ppl,
        perplexity=perplexity(ppl_logits, ppl_targets),
        perplexity_tokens=sum(len(t) for t in ppl_targets),
    )


@contextlib.contextmanager
def _quantized(cfg: GuardConfig, fmt: str):
    """``cfg.model`` quantized into ``fmt`` in a temporary directory (``sage quantize``'s library)."""
    import tempfile

    from sagellm.accel.quantization.checkpoint import quantize_checkpoint

    with tempfile.TemporaryDirectory(prefix=f"accuracy_guard_{fmt}_") as tmp:
        quantize_checkpoint(cfg.model, Path(tmp) / fmt, fmt, cfg.group_size)
        yield str(Path(tmp) / fmt)


@contextlib.contextmanager
def _as_is(path: str):
    yield path


def _weight_variants(cfg: GuardConfig):
    """(format, context manager giving the model dir, engine dtype) of each weight comparison."""
    from sagellm.accel.quantization.checkpoint import WEIGHT_QUANT_FORMATS

    specs = [WEIGHT_QUANT_FORMATS.get(fmt) for fmt in cfg.weight_formats]
    if any(spec.quant_method == "awq" for spec in specs) and cfg.dtype != "float16":
        yield "none", _as_is(cfg.model), "float16"  # control: what float16 alone does
    for spec in specs:
        yield spec.name, _quantized(cfg, spec.name), "float16" if spec.quant_method == "awq" else cfg.dtype


def run_guard(cfg: GuardConfig) -> GuardResult:
    from lmdeploy.tokenizer import Tokenizer

    tokenizer = Tokenizer(cfg.model)
    prompts = make_prompts(tokenizer, cfg.prompts, cfg.prompt_seed)
    ppl_docs = make_ppl_corpus(tokenizer, cfg.ppl_docs, cfg.ppl_tokens)
    ppl_targets = [doc[1:] for doc in ppl_docs]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    reference, sequences, ref_forced, ref_ppl_logits = _run_engine(cfg, "auto", prompts, None, ppl_docs)
    timings["float"] = time.perf_counter() - t0
    # the float engine's prefill argmax vs its own greedy decode: 1.0 unless the two paths disagree numerically
    self_agreement = target_argmax_agreement(ref_forced, reference).rate
    reference_ppl = perplexity(ref_ppl_logits, ppl_targets)

    common = dict(reference=reference, prompts=prompts, ppl_targets=ppl_targets, ref_forced=ref_forced,
                  reference_ppl=reference_ppl)
    reports: dict[str, AgreementMetrics] = {}
    for kv_dtype in cfg.kv_dtypes:
        policy = QuantizationProfile(kv_dtype=kv_dtype).lmdeploy_quant_policy("cpu")
        t0 = time.perf_counter()
        generated, _, forced, ppl_logits = _run_engine(cfg, kv_dtype, prompts, sequences, ppl_docs)
        timings[kv_dtype] = time.perf_counter() - t0
        report = KVAccuracyReport(kv_dtype=kv_dtype, quant_policy=policy,
                                  **_metrics(cfg, generated, forced, ppl_logits, **common))
        reports[report.label] = report
    for fmt, model, engine_dtype in _weight_variants(cfg):
        t0 = time.perf_counter()
        with model as path:
            variant = dataclasses.replace(cfg, model=path, dtype=engine_dtype)
            generated, _, forced, ppl_logits = _run_engine(variant, "auto", prompts, sequences, ppl_docs)
        report = WeightAccuracyReport(weight_format=fmt, engine_dtype=engine_dtype,
                                      **_metrics(cfg, generated, forced, ppl_logits, **common))
        timings[report.label] = time.perf_counter() - t0
        reports[report.label] = report
    return GuardResult(cfg, reports, self_agreement, timings)


# --------------------------------------------------------------------------- output


def write_markdown(path: Path, result: GuardResult, timestamp: str, train_steps: int = 0) -> None:
    cfg = result.config
    trained = f", trained {train_steps} steps on the local corpus first" if train_steps else ", weights as given"
    lines = [
        f"# Quantization accuracy guard — {timestamp}",
        "",
        f"- Model: `{cfg.model}` (dtype {cfg.dtype}{trained}), engine: LMDeploy PyTorch engine, device_type=cpu",
        f"- Greedy: {cfg.prompts} prompts (`sample_prompts`, seed {cfg.prompt_seed}) × {cfg.new_tokens} new tokens, "
        f"ignore_eos; teacher-forced on prompt + the float continuation",
        f"- Perplexity: {cfg.ppl_docs} held-out corpus documents × {cfg.ppl_tokens} tokens "
        f"(corpus seed {PPL_CORPUS_SEED})",
        f"- Float engine, prefill argmax vs its own greedy decode: {result.reference_self_agreement:.4f}",
    ]
    metrics = "greedy agreement | identical seqs | mean first divergence | teacher-forced agreement | ppl float | " \
              "ppl quant | ppl Δ (rel) |"

    def row(r) -> str:
        return (f"{r.greedy_agreement:.4f} | {r.identical_sequences}/{r.prompts} | {r.mean_first_divergence:.1f} | "
                f"{r.teacher_forced_agreement:.4f} | {r.reference_perplexity:.2f} | {r.perplexity:.2f} | "
                f"{r.perplexity_delta:+.2f} ({r.perplexity_rel_delta:+.2%}) |")

    kv = [r for r in result.reports.values() if isinstance(r, KVAccuracyReport)]
    weights = [r for r in result.reports.values() if isinstance(r, WeightAccuracyReport)]
    if kv:
        lines += ["", "KV-cache quantization (weights float):", "",
                  "| KV | quant_policy | " + metrics, "|---|---:|" + "---:|" * 7]
        lines += [f"| {r.kv_dtype} | {r.quant_policy} | " + row(r) for r in kv]
    if weights:
        lines += ["", f"Weight quantization (`sage quantize`, group size {cfg.group_size}; KV float; reference: the "
                  f"float checkpoint in {cfg.dtype}; `none@float16` = the float checkpoint run in float16):", "",
                  "| weights | engine dtype | " + metrics, "|---|---|" + "---:|" * 7]
        lines += [f"| {r.weight_format} | {r.engine_dtype} | " + row(r) for r in weights]
    lines.append("")
    path.write_text("\n".join(lines))


def _per_dtype(values: list[str], flag: str) -> dict[str, float]:
    out = {}
    for item in values:
        name, sep, number = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag}: expected NAME=VALUE (a KV dtype or weight format), got {item!r}")
        out[name] = float(number)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="HF model directory (default: sagellm.models.tiny.ensure_default_model())")
    p.add_argument("--kv-dtypes", default="int8,int4,fp8_e4m3,fp8_e5m2",
                   help="comma-separated quantized KV dtypes to compare ('' none)")
    p.add_argument("--weight-formats", default="",
                   help="comma-separated `sage quantize` formats to compare (awq-w4, awq-w8, w8)")
    p.add_argument("--group-size", type=int, default=128, help="group size of the awq-* formats")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-seed", type=int, default=0)
    p.add_argument("--ppl-docs", type=int, default=16)
    p.add_argument("--ppl-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", help="model (and float KV) dtype")
    p.add_argument("--train-steps", type=int, default=0,
                   help="first train the model this many steps on the local corpus (batch 8 x 64 tokens) into a "
                        "temporary directory and measure that; 0: measure the model as given")
    p.add_argument("--min-greedy-agreement", action="append", default=[], metavar="NAME=RATE")
    p.add_argument("--min-teacher-forced-agreement", action="append", default=[], metavar="NAME=RATE")
    p.add_argument("--max-ppl-rel-delta", action="append", default=[], metavar="NAME=FRACTION")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON + Markdown")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model
    if model is None:
        from sagellm.models.tiny import ensure_default_model

        model = str(ensure_default_model())
    settings = dict(kv_dtypes=tuple(x for x in args.kv_dtypes.split(",") if x),
                    weight_formats=tuple(x for x in args.weight_formats.split(",") if x), group_size=args.group_size,
                    prompts=args.prompts,
                    new_tokens=args.new_tokens, prompt_seed=args.prompt_seed, ppl_docs=args.ppl_docs,
                    ppl_tokens=args.ppl_tokens, dtype=args.dtype)
    if args.train_steps:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="accuracy_guard_") as tmp:
            trained = fit_on_corpus(model, str(Path(tmp) / f"{Path(model).name}-trained{args.train_steps}"),
                                    args.train_steps)
            result = run_guard(GuardConfig(model=trained, **settings))
    else:
        result = run_guard(GuardConfig(model=model, **settings))
    greedy = _per_dtype(args.min_greedy_agreement, "--min-greedy-agreement")
    forced = _per_dtype(args.min_teacher_forced_agreement, "--min-teacher-forced-agreement")
    ppl = _per_dtype(args.max_ppl_rel_delta, "--max-ppl-rel-delta")
    failures = []
    for name, report in result.reports.items():
        thresholds = AccuracyThresholds(greedy.get(name), forced.get(name), ppl.get(name))
        failures += thresholds.violations(report)
    payload = {**result.to_dict(), "train_steps": args.train_steps, "failures": failures}
    print(json.dumps(payload, indent=2))
    if not args.no_write:
        timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"accuracy_guard-{timestamp}.json").write_text(json.dumps(payload, indent=2))
        write_markdown(args.out / f"accuracy_guard-{timestamp}.md", result, timestamp, args.train_steps)
    for failure in failures:
        print(f"[accuracy_guard] FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
