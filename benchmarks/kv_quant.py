#!/usr/bin/env python3
"""KV-cache quantization at a fixed KV memory budget: concurrent sequences and throughput.

For each configuration (KV dtype x model dtype) the engine gets the same KV budget in bytes
(``--kv-budget-mib``); the number of blocks follows from the bytes one block takes in that
format (``sagellm.core`` ``KVCacheSchema``, checked against the tensors LMDeploy actually
allocates). A workload sequence holds ``--prompt-len + --new-tokens`` tokens; LMDeploy's decode
scheduling reserves ``prefill_interval`` tokens ahead and preempts when free blocks merely equal
the need, so a sequence is provisioned ``ceil((prompt + new + prefill_interval) / block_size)``
blocks and one block is kept spare:

    max concurrent sequences = (num_blocks - 1) // blocks_per_sequence

That many sequences are then submitted at once (``max_batch_size`` = that number) and the run
checks that they all ran concurrently (peak of the scheduler's running set) without a single
preemption (running -> waiting), and measures output throughput. A second pass runs every configuration at the same batch (the float32 capacity),
which isolates the per-token cost of (de)quantizing.

Configurations: ``float32`` and ``bfloat16`` KV (LMDeploy 0.11 keeps KV in the model dtype, so
these are float32 / bf16 models), ``int8`` / ``int4`` / ``fp8_e4m3`` / ``fp8_e5m2`` KV on a float32
model (scales in float32) and int8 / int4 / fp8_e4m3 on a bf16 model (scales in bf16, the
like-for-like comparison with bf16 KV). fp8 is ``quant_policy`` 8 with float8 storage (the cpu
device's ``set_kv_quant_storage``): LMDeploy allocates int8's layout -- one byte per element plus
the per-token-per-head scale/zero -- so its bytes per token equal int8's.

Writes ``benchmarks/results/kv_quant-<UTC timestamp>.json`` and ``.md``::

    python benchmarks/kv_quant.py                   # default embedded tiny model
    python benchmarks/kv_quant.py --model /path/to/hf_model --kv-budget-mib 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sagellm.bench.machine import git_commit, machine_info  # noqa: E402
from sagellm.bench.report import write_result_files  # noqa: E402
from sagellm.core.quant import QuantizationProfile  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class KVConfig:
    name: str
    kv_dtype: str  # QuantizationProfile.kv_dtype: auto (= model dtype), int8, int4, fp8_e4m3, fp8_e5m2
    model_dtype: str


CONFIGS: dict[str, KVConfig] = {
    c.name: c
    for c in (
        KVConfig("float32", "auto", "float32"),
        KVConfig("bfloat16", "auto", "bfloat16"),
        KVConfig("int8", "int8", "float32"),
        KVConfig("int4", "int4", "float32"),
        KVConfig("fp8_e4m3", "fp8_e4m3", "float32"),
        KVConfig("fp8_e5m2", "fp8_e5m2", "float32"),
        KVConfig("int8/bf16", "int8", "bfloat16"),
        KVConfig("int4/bf16", "int4", "bfloat16"),
        KVConfig("fp8_e4m3/bf16", "fp8_e4m3", "bfloat16"),
    )
}


# --------------------------------------------------------------------------- workload


def make_prompts(model: str, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of exactly ``length`` token ids (BOS + corpus text), deterministic."""
    from lmdeploy.tokenizer import Tokenizer

    from sagellm.models.corpus import iter_corpus

    tokenizer = Tokenizer(model)
    stream: list[int] = []
    docs = iter_corpus(10**6, seed=7)
    while len(stream) < count * length:
        stream += tokenizer.encode(next(docs), add_bos=False)
    bos = tokenizer.encode("", add_bos=True)[:1]
    return [bos + stream[i * length: (i + 1) * length - len(bos)] for i in range(count)]


def model_shape(model: str) -> dict:
    config = json.loads((Path(model) / "config.json").read_text())
    heads = config["num_attention_heads"]
    return {
        "num_layers": config["num_hidden_layers"],
        "num_kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "hidden_size": config["hidden_size"],
        "vocab_size": config["vocab_size"],
    }


# --------------------------------------------------------------------------- one configuration


class RunningPeak:
    """Samples the scheduler's running + locked (executing) sequence count on a background thread,
    and counts preemptions (a running sequence sent back to waiting) while active."""

    def __init__(self, scheduler, interval_s: float = 0.002):
        from lmdeploy.pytorch.messages import MessageStatus

        self._scheduler = scheduler
        self._manager = scheduler.seq_manager
        self._states = (MessageStatus.RUNNING, MessageStatus.LOCKED)
        self._waiting = MessageStatus.WAITING
        self._interval = interval_s
        self.peak = 0
        self.preemptions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _count_preemptions(self, set_status):
        def wrapper(seq, status):
            if status == self._waiting and seq.status in self._states:
                self.preemptions += 1
            return set_status(seq, status)

        return wrapper

    def _loop(self):
        while not self._stop.is_set():
            try:
                now = sum(self._manager.num_sequences(s) for s in self._states)
            except RuntimeError:  # a map changed while being read; sample again
                continue
            self.peak = max(self.peak, now)
            time.sleep(self._interval)

    def __enter__(self):
        # instance attribute shadows the method for this pass only
        self._scheduler._set_message_status = self._count_preemptions(self._scheduler._set_message_status)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        del self._scheduler._set_message_status


#: KV dtypes whose cpu layout is another dtype's: fp8 is stored as policy 8, int8's bytes (1-byte elements
#: plus the per-token-per-head scale/zero), while KVCacheSchema's fp8 dtypes carry no per-token scales.
LAYOUT_AS: dict[str, str] = {"fp8_e4m3": "int8", "fp8_e5m2": "int8"}


def _admit_every_fitting_sequence():
    """Install sagellm's scheduling hooks without one-request prefill steps; returns the undo.

    The capacity pass checks that every sequence the KV budget holds runs at once. Prefilled one
    per step (the default on the CPU), the first would finish their few tokens before the last got
    in. Plugins load first, so that their own install does not replace these hooks.
    """
    from lmdeploy.pytorch.plugins import load_plugins
    from lmdeploy.pytorch.sched_hooks import get_sched_hooks, set_sched_hooks

    from sagellm.engines.lmdeploy.scheduling import SagellmSchedulerHooks
    from sagellm.scheduler_ir import SchedulerConfig

    load_plugins()
    previous = get_sched_hooks()
    set_sched_hooks(SagellmSchedulerHooks(SchedulerConfig(sched_prefill_split=False)))
    return lambda: set_sched_hooks(previous)


def run_config(cfg: KVConfig, args, shape: dict) -> dict:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    from sagellm.engines.lmdeploy.cpu.device import set_kv_quant_storage

    profile = QuantizationProfile(kv_dtype=cfg.kv_dtype)
    layout = QuantizationProfile(kv_dtype=LAYOUT_AS.get(cfg.kv_dtype, cfg.kv_dtype))
    schema = layout.kv_cache_schema(num_layers=shape["num_layers"], num_kv_heads=shape["num_kv_heads"],
                                    head_dim=shape["head_dim"], model_dtype=cfg.model_dtype,
                                    block_size=args.block_size)
    budget = int(args.kv_budget_mib * 2**20)
    num_blocks = schema.blocks_in(budget)
    blocks_per_seq = schema.num_blocks_for(args.prompt_len + args.new_tokens + args.prefill_interval)
    capacity = (num_blocks - 1) // blocks_per_seq
    engine = dict(device_type="cpu", dtype=cfg.model_dtype, block_size=args.block_size,
                  num_gpu_blocks=num_blocks, max_batch_size=max(capacity, args.common_batch),
                  session_len=args.prompt_len + args.new_tokens + args.block_size, eager_mode=True,
                  enable_prefix_caching=False, quant_policy=profile.lmdeploy_quant_policy("cpu"),
                  prefill_interval=args.prefill_interval,
                  max_prefill_token_num=args.max_prefill_tokens)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    prompts = make_prompts(args.model, max(capacity, args.common_batch), args.prompt_len)

    pipe = None  # built below, between the hooks' install and their undo

    def generate(batch):
        requests = (
            dict(messages=None, input_ids=ids, gen_config=gen, session_id=next(pipe._session_id),
                 sequence_start=True, sequence_end=True, stream_response=False, do_preprocess=False)
            for ids in batch
        )
        outputs = [[] for _ in batch]
        for i, stream in enumerate(pipe._infer(requests, multiplex=False)):
            for resp in stream:
                outputs[i].extend(resp.token_ids or [])
        return outputs

    def timed(batch):
        walls, peaks, preemptions, lengths = [], [], [], []
        for _ in range(args.repeats):
            with RunningPeak(pipe.engine.scheduler) as peak:
                t = time.perf_counter()
                outputs = generate(batch)
                walls.append(time.perf_counter() - t)
            peaks.append(peak.peak)
            preemptions.append(peak.preemptions)
            lengths.append(sum(len(o) for o in outputs))
        wall = statistics.median(walls)
        return {"batch": len(batch), "wall_s": round(wall, 3), "wall_s_per_pass": [round(w, 3) for w in walls],
                "output_tokens": lengths[0], "output_tok_per_s": round(lengths[0] / wall, 1),
                "peak_running": max(peaks), "preemptions": sum(preemptions), "all_tokens": all(n == len(batch) * args.new_tokens for n in lengths)}

    set_kv_quant_storage(cfg.kv_dtype)  # read by the cache engine when it allocates
    restore_hooks = _admit_every_fitting_sequence()
    try:
        t0 = time.perf_counter()
        pipe = pipeline(args.model, backend_config=PytorchEngineConfig(**engine), log_level="ERROR")
        load_s = time.perf_counter() - t0
        cache_engine = pipe.engine.executor.model_agent.cache_engine
        allocated = sum(t.numel() * t.element_size() for t in cache_engine.full_gpu_cache)
        cache_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in cache_engine.full_gpu_cache})
        generate(prompts[: min(4, len(prompts))])  # warmup
        at_capacity = timed(prompts[:capacity])
        at_common = timed(prompts[: args.common_batch])
    finally:
        if pipe is not None:
            pipe.close()
        restore_hooks()
    return {
        "config": cfg.name,
        "kv_dtype": profile.kv_cache_dtype(cfg.model_dtype),
        "model_dtype": cfg.model_dtype,
        "quant_policy": engine["quant_policy"],
        "bytes_per_token": schema.bytes_per_token(),
        "bytes_per_block": schema.bytes_per_block(),
        "num_blocks": num_blocks,
        "blocks_per_sequence": blocks_per_seq,
        "max_concurrent_sequences": capacity,
        "kv_bytes_allocated": allocated,
        "kv_bytes_budget": budget,
        "cache_tensor_dtypes": cache_dtypes,
        "load_s": round(load_s, 2),
        "at_capacity": at_capacity,
        "at_common_batch": at_common,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- report


def add_ratios(results: list[dict]) -> None:
    by_name = {r["config"]: r for r in results}
    for r in results:
        for base in ("float32", "bfloat16"):
            if base in by_name:
                b = by_name[base]
                r[f"sequences_vs_{base}"] = round(r["max_concurrent_sequences"] / b["max_concurrent_sequences"], 3)
                r[f"throughput_at_capacity_vs_{base}"] = round(
                    r["at_capacity"]["output_tok_per_s"] / b["at_capacity"]["output_tok_per_s"], 3)


def render_markdown(report: dict) -> str:
    a = report["args"]
    m = report["machine"]
    s = report["model_shape"]
    lines = [
        f"# KV-cache quantization at a fixed KV budget — {report['timestamp']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, load average at start {m['loadavg_1_5_15']}",
        f"- Model: `{a['model']}` ({s['num_layers']} layers, {s['num_kv_heads']} KV heads × head_dim {s['head_dim']})",
        f"- KV budget {a['kv_budget_mib']} MiB, block size {a['block_size']}; each sequence = {a['prompt_len']} prompt "
        f"+ {a['new_tokens']} generated tokens (greedy, ignore_eos); median of {a['repeats']} passes",
        f"- Commit: `{report['git_commit']}`",
        "",
        "| KV | model dtype | bytes/token | blocks | max concurrent seqs | × vs fp32 | × vs bf16 | peak running "
        "| preemptions | tok/s at capacity | tok/s at batch " + str(a["common_batch"]) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['kv_dtype']} | {r['model_dtype']} | {r['bytes_per_token']} | {r['num_blocks']} | "
            f"{r['max_concurrent_sequences']} | {r.get('sequences_vs_float32', float('nan')):.2f} | "
            f"{r.get('sequences_vs_bfloat16', float('nan')):.2f} | {r['at_capacity']['peak_running']} | "
            f"{r['at_capacity']['preemptions']} | "
            f"{r['at_capacity']['output_tok_per_s']:.0f} | {r['at_common_batch']['output_tok_per_s']:.0f} |"
        )
    lines += ["", "Peak running = largest number of sequences the scheduler held running at once during the "
              "capacity pass (equal to the capacity when all fit concurrently); preemptions = running sequences "
              "sent back to waiting for lack of blocks during that pass (0: the capacity is real).", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="HF model directory (default: sagellm.models.tiny.ensure_default_model())")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    p.add_argument("--kv-budget-mib", type=float, default=8.0, help="KV cache bytes every configuration gets")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--common-batch", type=int, default=16, help="batch of the equal-concurrency pass")
    p.add_argument("--max-prefill-tokens", type=int, default=8192)
    p.add_argument("--prefill-interval", type=int, default=16,
                   help="LMDeploy's decode steps per scheduling round (it reserves that many tokens ahead)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from sagellm.models.tiny import ensure_default_model

        args.model = str(ensure_default_model())
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; valid: {', '.join(CONFIGS)}")
    shape = model_shape(args.model)
    machine = machine_info()
    results = []
    for name in names:
        print(f"[kv_quant] {name} ...", flush=True)
        results.append(run_config(CONFIGS[name], args, shape))
        r = results[-1]
        print(f"[kv_quant] {name}: {r['max_concurrent_sequences']} seqs, "
              f"{r['at_capacity']['output_tok_per_s']} tok/s at capacity", flush=True)
    add_ratios(results)
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"timestamp": timestamp, "git_commit": git_commit(), "machine": machine,
              "model_shape": shape, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": results}
    print(json.dumps(report, indent=2))
    if not args.no_write:
        json_path, md_path = write_result_files(args.out, f"kv_quant-{timestamp}", report, render_markdown(report))
        print(f"[kv_quant] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
