#!/usr/bin/env python3
"""Colocated vs prefill/decode-disaggregated serving on one host, same run, same requests (issue 5).

Arms, one after the other (never both at once):

* ``colocated``: one ``sage llm engine start`` (role ``both``).
* ``pd``: ``LocalPDDeployment``: a ``--role prefill`` engine, ``--decode-engines`` ``--role decode``
  engines (KV over ``--kv-transport``, default shm) and the PD router in front.

Workload (after one untimed warm-up request per prompt length): ``--requests`` prompts of random token ids (seeded; lengths cycling through
``--prompt-lengths``), each sent to LMDeploy's ``/generate`` with ``max_tokens=--max-tokens``,
greedy, ``ignore_eos``; ``--concurrency`` clients. Measured per request: end-to-end latency
(client side) and the output ids; per arm: wall time, output tokens/s, and for PD the prompt
tokens the decode engines pulled over the transport (their ``sagellm_prefix_hit_tokens{tier=remote}``)
against the expected count (every full block but the one holding the last prompt token).
Outputs must be token-identical across the arms.

On a 2-core host the arms' processes share the same cores, so PD cannot win here: this measures
what the second hop and the KV transfer cost, and checks correctness under load.

    python benchmarks/pd_serving.py                 # ~3 minutes on the 2-core dev host
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sagellm.control_plane.pd_local import LocalPDDeployment  # noqa: E402


def post(url: str, body: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def remote_hits(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sagellm_prefix_hit_tokens_total{") and 'tier="remote"' in line)


def warm_up(base_url: str, prompts: list[list[int]], max_tokens: int) -> None:
    """One request per prompt length (other token ids), so first-use costs are not timed."""
    rng = random.Random(99)
    for length in sorted({len(p) for p in prompts}):
        post(f"{base_url}/generate", {"input_ids": [rng.randrange(5, 4000) for _ in range(length)], "max_tokens": max_tokens,
                                      "temperature": 0, "ignore_eos": True})


def run_workload(base_url: str, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict:
    results: list[dict] = [{} for _ in prompts]

    def one(index: int) -> None:
        started = time.perf_counter()
        body = post(f"{base_url}/generate", {"input_ids": prompts[index], "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
        results[index] = {"latency_s": time.perf_counter() - started, "output_ids": body["output_ids"]}

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - started
    latencies = sorted(r["latency_s"] for r in results)
    return {
        "wall_s": wall,
        "output_tokens_per_s": sum(len(r["output_ids"]) for r in results) / wall,
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
        "requests": results,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF checkpoint (default: the embedded tiny model)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-lengths", default="256,512,384")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--decode-engines", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--kv-transport", default="backend=shm")
    parser.add_argument("--order", default="colocated,pd", help="arms in the order they run")
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.model is None:
        from sagellm.models.tiny import ensure_default_model

        args.model = str(ensure_default_model())
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 4000) for _ in range(lengths[i % len(lengths)])] for i in range(args.requests)]
    engine_args = ("--device", "cpu", "--block-size", str(args.block_size), "--session-len", "2048", "--model-name", "m")
    env = {"SAGELLM_CPU_MEMORY_GIB": "2"}
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    arms = {}
    with tempfile.TemporaryDirectory(prefix="pd-serving-") as tmp:
        logs = Path(tmp)
        def run_colocated() -> None:
            # a one-engine "deployment" is just the engine; LocalPDDeployment's launcher starts it
            colocated = LocalPDDeployment(url="", prefill_url="", decode_urls=[], kv_address="")
            try:
                url = colocated._engine(args.model, logs / "colocated.log", list(engine_args), {**os.environ, **env}, 300)
                warm_up(url, prompts, args.max_tokens)
                arms["colocated"] = run_workload(url, prompts, args.max_tokens, args.concurrency)
            finally:
                colocated.stop()

        def run_pd() -> None:
            nonlocal pulled
            with LocalPDDeployment.start(args.model, decode_engines=args.decode_engines, engine_args=engine_args,
                                         decode_args=("--kv-transport", args.kv_transport), log_dir=logs / "pd", env=env) as pd:
                warm_up(pd.url, prompts, args.max_tokens)
                before = sum(remote_hits(u) for u in pd.decode_urls)  # the warm-up's pulls are not counted
                arms["pd"] = run_workload(pd.url, prompts, args.max_tokens, args.concurrency)
                pulled = sum(remote_hits(u) for u in pd.decode_urls) - before

        pulled = 0.0
        for arm in args.order.split(","):
            {"colocated": run_colocated, "pd": run_pd}[arm]()
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    expected_pulled = sum(args.block_size * ((len(p) - 1) // args.block_size) for p in prompts)
    identical = all(a["output_ids"] == b["output_ids"] for a, b in zip(arms["colocated"]["requests"], arms["pd"]["requests"]))
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"benchmark": "pd_serving", "timestamp": timestamp, "args": vars(args), "load": load,
              "identical_outputs": identical, "pd_pulled_prompt_tokens": pulled, "pd_expected_pulled_tokens": expected_pulled,
              "arms": arms}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pd_serving-{timestamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Colocated vs PD serving — {timestamp}",
        "",
        f"{args.requests} requests (prompt lengths {args.prompt_lengths} tokens, {args.max_tokens} output tokens, greedy, "
        f"`/generate`), {args.concurrency} concurrent clients, block size {args.block_size}, model `{args.model}`; PD: 1 prefill + "
        f"{args.decode_engines} decode engine(s), `--kv-transport {args.kv_transport}`, router in front. Load average "
        f"before/after: {load['before']} / {load['after']} (2-core host shared with other jobs; all processes share the cores).",
        "",
        "| arm | wall s | output tok/s | latency p50 s | latency p95 s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("colocated", "pd"):
        arm = arms[name]
        lines.append(f"| {name} | {arm['wall_s']:.2f} | {arm['output_tokens_per_s']:.1f} | {arm['latency_p50_s']:.3f} | {arm['latency_p95_s']:.3f} |")
    lines += ["", f"Outputs token-identical across arms: {'yes' if identical else 'NO'}. Prompt tokens the decode engine(s) pulled "
              f"over the transport: {pulled:.0f} (expected {expected_pulled}: every full block but the one holding the last prompt token)."]
    (out / f"pd_serving-{timestamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if identical and pulled == expected_pulled else 1


if __name__ == "__main__":
    sys.exit(main())
