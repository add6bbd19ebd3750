#!/usr/bin/env python3
"""Speculative decoding on the cpu device (or ``--device cuda``): TPOT of a ~100M target with and without a tiny draft.

Models (created and trained once, cached under ``<sagellm cache>/bench/spec_decode/``):

* target: ``sage models create-tiny --preset small-100m`` (Llama, hidden 768, 12 layers, vocab 8192);
* draft: the ``tiny`` shape with the target's vocabulary and tokenizer (hidden 256, ``--draft-layers``);

both trained briefly on the same local corpus with the accuracy guard's ``fit_on_corpus``
(``scripts/accuracy_guard.py``) -- a random-weight draft agrees with a random-weight target on
nothing, so a draft needs *some* shared knowledge to be worth running.

Configurations, each its own engine, one after the other in this process: the target alone
(baseline), then the target with the draft proposing ``k`` tokens per step for each ``--k``.

Passes per configuration (after a warmup request):

* **latency** -- the ``--prompts`` prompts one at a time (batch 1), streamed: TTFT, TPOT
  ``(t_last - t_first) / (tokens - 1)`` per request, medians reported;
* **batch** -- all prompts submitted at once: output tok/s.

Every speculative output is compared token for token with the baseline's (greedy must be
identical). Acceptance comes from sagellm's ``draft_model`` proposer (``AcceptanceStats``; it also
counts the steps LMDeploy runs for sequences that already finished inside a multi-step decode
round). Writes ``benchmarks/results/spec_decode-<UTC timestamp>.json`` and ``.md``::

    python benchmarks/spec_decode.py                         # defaults: train 60 / 300 steps, k = 2, 4
    python benchmarks/spec_decode.py --target /m/big --draft /m/small --train-steps 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sagellm.accel.spec_decode import SpecDecodeProfile  # noqa: E402
from sagellm.bench.machine import git_state, machine_info, pkg_version  # noqa: E402
from sagellm.bench.report import write_result_files  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- models


def _guard():
    import importlib.util

    path = REPO_ROOT / "scripts" / "accuracy_guard.py"
    spec = importlib.util.spec_from_file_location("sagellm_accuracy_guard", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prepare_models(args) -> tuple[str, str, dict]:
    """(target dir, draft dir, how they were made): created and trained once, then reused from the cache."""
    from sagellm.models.tiny import cache_root, create_tiny_model, preset_spec

    made = {}
    root = cache_root() / "bench" / "spec_decode"
    target, draft = args.target, args.draft
    if target is None:
        spec = preset_spec("small-100m")
        target = str(create_tiny_model(root / f"target-{spec.spec_hash()}", spec))
        made["target_spec"] = spec.to_dict()
    if draft is None:
        target_config = json.loads((Path(target) / "config.json").read_text())
        spec = preset_spec("tiny", vocab_size=target_config["vocab_size"], num_layers=args.draft_layers)
        draft = str(create_tiny_model(root / f"draft-{spec.spec_hash()}", spec))
        made["draft_spec"] = spec.to_dict()
    guard = None
    for role, steps in (("target", args.train_steps), ("draft", args.draft_train_steps)):
        path = target if role == "target" else draft
        if steps:
            out = root / f"{Path(path).name}-trained{steps}"
            if not (out / "config.json").is_file():
                guard = guard or _guard()
                t0 = time.perf_counter()
                print(f"[spec_decode] training the {role} {steps} steps ...", flush=True)
                tmp = root / f".{out.name}.partial"
                guard.fit_on_corpus(path, str(tmp), steps)
                tmp.rename(out)
                made[f"{role}_train_s"] = round(time.perf_counter() - t0, 1)
            path = str(out)
        made[f"{role}_train_steps"] = steps
        if role == "target":
            target = path
        else:
            draft = path
    return target, draft, made


def parameter_count(model: str) -> int:
    from safetensors import safe_open

    total = 0
    for path in Path(model).glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                total += _prod(f.get_slice(name).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------------- one configuration


def make_prompts(model: str, count: int) -> list[list[int]]:
    from lmdeploy.tokenizer import Tokenizer

    from sagellm.models.corpus import sample_prompts

    tokenizer = Tokenizer(model)
    return [tokenizer.encode(text, add_bos=True) for text in sample_prompts(count, seed=11)]


def _requests(pipe, prompts, gen, stream):
    return (
        dict(messages=None, input_ids=ids, gen_config=gen, session_id=next(pipe._session_id), sequence_start=True,
             sequence_end=True, stream_response=stream, do_preprocess=False)
        for ids in prompts
    )


def timed_request(pipe, ids, gen) -> dict:
    """One streamed request alone: its tokens, TTFT and TPOT."""
    tokens: list[int] = []
    t0 = time.perf_counter()
    t_first = t_last = None
    for stream in pipe._infer(_requests(pipe, [ids], gen, True), multiplex=False):
        for response in stream:
            if response.token_ids:
                now = time.perf_counter()
                t_first = t_first or now
                t_last = now
                tokens.extend(response.token_ids)
    tpot = (t_last - t_first) / (len(tokens) - 1) if len(tokens) > 1 else None
    return {"tokens": tokens, "ttft_s": t_first - t0, "tpot_s": tpot, "wall_s": t_last - t0}


def batch_pass(pipe, prompts, gen) -> dict:
    outputs = [[] for _ in prompts]
    t0 = time.perf_counter()
    for i, stream in enumerate(pipe._infer(_requests(pipe, prompts, gen, False), multiplex=False)):
        for response in stream:
            outputs[i].extend(response.token_ids or [])
    wall = time.perf_counter() - t0
    produced = sum(len(o) for o in outputs)
    return {"outputs": outputs, "wall_s": round(wall, 3), "output_tokens": produced,
            "output_tok_per_s": round(produced / wall, 2)}


def engine_dtype(device: str) -> str:
    """float32 on the cpu device (the oracle's dtype); LMDeploy 0.11 runs float16/bfloat16 only elsewhere."""
    return "float32" if device == "cpu" else "float16"


def run_config(target: str, draft: str, k: int, prompts, args) -> dict:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    from sagellm.engines.lmdeploy.spec_decode import acceptance_stats, engine_overrides, speculative_config

    profile = None if k == 0 else SpecDecodeProfile(draft_model=draft, num_speculative_tokens=k)
    overrides = {} if profile is None or not args.round_fix else engine_overrides(profile, args.device)
    engine = PytorchEngineConfig(device_type=args.device, dtype=engine_dtype(args.device), block_size=16,
                                 session_len=2048, num_gpu_blocks=args.num_blocks,
                                 max_batch_size=max(8, len(prompts)), eager_mode=args.device == "cpu",
                                 enable_prefix_caching=False, **overrides)
    spec = None if profile is None else speculative_config(profile, target)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    t0 = time.perf_counter()
    pipe = pipeline(target, backend_config=engine, speculative_config=spec, log_level="ERROR")
    load_s = time.perf_counter() - t0
    try:
        timed_request(pipe, prompts[0], GenerationConfig(max_new_tokens=8, do_sample=False, top_k=1,
                                                         ignore_eos=True))  # warmup
        stats = acceptance_stats(pipe.engine)
        if stats is not None:
            stats.reset()
        latency = [timed_request(pipe, ids, gen) for ids in prompts]
        latency_stats = None if stats is None else stats.to_dict()
        batch = batch_pass(pipe, prompts, gen) if args.batch_pass else None
    finally:
        pipe.close()
    tpots = [r["tpot_s"] for r in latency if r["tpot_s"] is not None]
    return {
        "name": "baseline" if k == 0 else f"k={k}" + ("" if args.round_fix else " (16-loop rounds)"),
        "prefill_interval": engine.prefill_interval,
        "num_speculative_tokens": k,
        "load_s": round(load_s, 2),
        "tpot_ms_median": round(1000 * statistics.median(tpots), 2),
        "tpot_ms_mean": round(1000 * statistics.fmean(tpots), 2),
        "tpot_ms_per_request": [round(1000 * t, 2) for t in tpots],
        "ttft_ms_median": round(1000 * statistics.median(r["ttft_s"] for r in latency), 2),
        "latency_tok_per_s": round(sum(len(r["tokens"]) for r in latency) / sum(r["wall_s"] for r in latency), 2),
        "acceptance": latency_stats,
        "batch": None if batch is None else {k2: v for k2, v in batch.items() if k2 != "outputs"},
        "torch_threads": torch.get_num_threads(),
        "_latency_outputs": [r["tokens"] for r in latency],
        "_batch_outputs": None if batch is None else batch["outputs"],
    }


# --------------------------------------------------------------------------- report


def compare(results: list[dict]) -> None:
    base = results[0]
    for r in results:
        r["identical_to_baseline"] = (r["_latency_outputs"] == base["_latency_outputs"]
                                      and r["_batch_outputs"] == base["_batch_outputs"])
        r["tpot_speedup_vs_baseline"] = round(base["tpot_ms_median"] / r["tpot_ms_median"], 3)
        if r["batch"] and base["batch"]:
            ratio = r["batch"]["output_tok_per_s"] / base["batch"]["output_tok_per_s"]
            r["batch_throughput_vs_baseline"] = round(ratio, 3)
    for r in results:
        r.pop("_latency_outputs")
        r.pop("_batch_outputs")


def render_markdown(report: dict) -> str:
    a, m, models = report["args"], report["machine"], report["models"]
    lines = [
        f"# Speculative decoding on the {a.get('device', 'cpu')} device — {report['timestamp']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {'; '.join(m.get('gpus') or []) or 'no GPU'}, "
        f"load average at start {m['loadavg_1_5_15']}",
        f"- Target: `{models['target']}` ({models['target_parameters'] / 1e6:.1f} M parameters, trained "
        f"{models['made'].get('target_train_steps', 0)} steps); draft: `{models['draft']}` "
        f"({models['draft_parameters'] / 1e6:.1f} M parameters, trained {models['made'].get('draft_train_steps', 0)} "
        "steps), same tokenizer, both on the local corpus (`fit_on_corpus`, batch 8 × 64 tokens)",
        f"- Workload: {a['prompts']} prompts (`sample_prompts`, seed 11) × {a['new_tokens']} new tokens, greedy, "
        f"ignore_eos; latency pass = one request at a time (streamed), batch pass = all at once; "
        f"{engine_dtype(a.get('device', 'cpu'))}, {'eager' if a.get('device', 'cpu') == 'cpu' else 'CUDA graphs'}",
        f"- Commit: `{report['git']['commit']}`{' (dirty)' if report['git']['dirty'] else ''}",
        "",
        "| config | loops / round | TPOT median (ms) | TPOT speedup | TTFT median (ms) | tok/s at batch 1 | acceptance rate "
        "| tokens per target step | tok/s, batch of all | × baseline | token-identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        acc = r["acceptance"]
        batch = r["batch"] or {}
        lines.append(
            f"| {r['name']} | {r['prefill_interval']} | {r['tpot_ms_median']:.1f} | {r['tpot_speedup_vs_baseline']:.2f}× | "
            f"{r['ttft_ms_median']:.0f} | {r['latency_tok_per_s']:.1f} | "
            f"{'—' if acc is None else format(acc['acceptance_rate'], '.3f')} | "
            f"{'—' if acc is None else format(acc['tokens_per_step'], '.2f')} | "
            f"{batch.get('output_tok_per_s', float('nan')):.1f} | "
            f"{r.get('batch_throughput_vs_baseline', float('nan')):.2f}× | "
            f"{'yes' if r['identical_to_baseline'] else '**no**'} |"
        )
    lines += [
        "",
        "TPOT = (last token time − first token time) / (tokens − 1) of each streamed request, median over requests. "
        "Acceptance = drafts kept / drafts proposed over the latency pass (sagellm's `draft_model` proposer; it "
        "also counts steps LMDeploy runs for sequences that already finished inside a multi-step decode round). "
        "Acceptance by draft position: " + "; ".join(
            f"{r['name']}: {[round(x, 2) for x in r['acceptance']['acceptance_by_position']]}"
            for r in report["results"] if r["acceptance"]) + ".",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", help="target model dir (default: the small-100m preset, created in the cache)")
    p.add_argument("--draft", help="draft model dir (default: the tiny shape with the target's vocabulary)")
    p.add_argument("--draft-layers", type=int, default=2, help="layers of the default draft")
    p.add_argument("--train-steps", type=int, default=60, help="fit_on_corpus steps for the target (0: as given)")
    p.add_argument("--draft-train-steps", type=int, default=300, help="fit_on_corpus steps for the draft")
    p.add_argument("--k", default="2,4", help="comma-separated num_speculative_tokens to compare with the baseline")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--num-blocks", type=int, default=512, help="KV blocks of 16 tokens (target and draft each)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="engine device (cuda: float16 with CUDA graphs)")
    p.add_argument("--no-batch-pass", dest="batch_pass", action="store_false")
    p.add_argument("--default-rounds", dest="round_fix", action="store_false",
                   help="keep LMDeploy's 16-loop decode rounds under speculation (no engine_overrides)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ks = [int(x) for x in args.k.split(",") if x]
    if any(k < 1 for k in ks):
        raise SystemExit("--k: values must be >= 1 (the baseline runs anyway)")
    machine = machine_info()
    target, draft, made = prepare_models(args)
    prompts = make_prompts(target, args.prompts)
    results = []
    for k in [0, *ks]:
        print(f"[spec_decode] {'baseline' if k == 0 else f'k={k}'} ...", flush=True)
        results.append(run_config(target, draft, k, prompts, args))
        r = results[-1]
        print(f"[spec_decode] {r['name']}: TPOT {r['tpot_ms_median']} ms, acceptance "
              f"{None if r['acceptance'] is None else round(r['acceptance']['acceptance_rate'], 3)}", flush=True)
    compare(results)
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "timestamp": timestamp, "git": git_state(), "machine": machine,
        "versions": {name: pkg_version(name) for name in ("torch", "transformers", "lmdeploy")},
        "models": {"target": target, "draft": draft, "target_parameters": parameter_count(target),
                   "draft_parameters": parameter_count(draft), "made": made},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if not args.no_write:
        json_path, md_path = write_result_files(args.out, f"spec_decode-{timestamp}", report, render_markdown(report))
        print(f"[spec_decode] wrote {json_path} and {md_path}")
    return 0 if all(r["identical_to_baseline"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
