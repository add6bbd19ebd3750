"""Run a suite against its peers, interleaved, and assemble the report (a JSON-ready dict).

Order of work: measure the machine's peak (before any server runs); then per group: start every
peer's server (one after the other, each waited for with a bound), warm each up, check its idle CPU,
and for every scenario and repetition run the peers one at a time in rotated order (scenario i,
repetition r starts with peer ``(i + r) % n``), so slow drifts of a shared machine hit every peer alike;
stop the servers. Servers of a group stay up while the others run; those this run started are paused
(SIGSTOP) while another peer is measured, so each peer has the machine to itself (an idle vLLM polls
at about half a core), unless ``RunOptions.pause_idle`` is off; the CPU others use is recorded.

Each repetition uses a fresh workload seed (``seed + 1000 * r``) so no peer is served from a prefix
cache warmed by an earlier repetition; all peers get the same requests within a repetition.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sagellm.bench import SCHEMA_VERSION
from sagellm.bench.client import Endpoint
from sagellm.bench.loadgen import LoadPattern, run_load
from sagellm.bench.machine import git_state, loadavg, machine_info
from sagellm.bench.metrics import METRICS, better_ratio, roofline_metrics, scenario_metrics
from sagellm.bench.peers import PeerSpec, RunningPeer, model_shape, start_peer
from sagellm.bench.procstats import sample_tree
from sagellm.bench.scrape import counter_delta, extract, scrape
from sagellm.bench.stats import median
from sagellm.bench.suites import Scenario, Suite, resolve_model
from sagellm.bench.workloads import Workload, WorkloadSpec, build_workload, prefix_stats

__all__ = ["RunOptions", "run_suite"]


@dataclass
class RunOptions:
    out_dir: Path
    name: str
    repetitions: int | None = None
    vllm_python: Path | None = None
    keep_requests: bool = True
    progress: bool = True
    measure_peak: bool = True
    only_scenarios: Sequence[str] = ()
    command: list[str] = field(default_factory=list)
    pause_idle: bool = True  # SIGSTOP the started servers that are not being measured (RunningPeer.pause)


class _Sampler:
    """Samples a server's gauges (``/metrics``) and RSS once a second while a scenario runs."""

    def __init__(self, peer: RunningPeer, interval_s: float = 1.0):
        self.peer, self.interval = peer, interval_s
        self.gauges_max: dict[str, float] = {}
        self.rss_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        values = extract(scrape(self.peer.base_url))
        for k in ("kv_usage",):
            if k in values:
                self.gauges_max[k] = max(self.gauges_max.get(k, 0.0), values[k])
        tree = sample_tree(self.peer.pid)
        if tree:
            self.rss_max = max(self.rss_max, tree.rss_bytes)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()


def _client_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu(peer: RunningPeer) -> float | None:
    tree = sample_tree(peer.pid)
    return tree.cpu_s if tree else None


def run_scenario(peer: RunningPeer, others: Sequence[RunningPeer], scenario: Scenario, workload: Workload,
                 on_done: Callable | None = None) -> dict[str, Any]:
    """One scenario against one peer: warm-up, load, server samples, metrics."""
    endpoint = Endpoint(peer.base_url, peer.model_name)
    if scenario.warmup_requests:
        _warmup(endpoint, scenario.warmup_requests, seed=zlib.crc32(scenario.name.encode()) & 0xFFFF)
    counters_before = extract(scrape(peer.base_url))
    cpu_before = _cpu(peer)
    others_before = [_cpu(o) for o in others]
    client_before = _client_cpu_s()
    load_before = loadavg()
    with _Sampler(peer) as sampler:
        records, wall = asyncio.run(run_load(endpoint, workload, scenario.load, request_timeout_s=scenario.request_timeout_s,
                                             deadline_s=scenario.deadline_s, on_done=on_done))
    cpu_after = _cpu(peer)
    others_after = [_cpu(o) for o in others]
    server = {
        "counters": counter_delta(counters_before, extract(scrape(peer.base_url))),
        "gauges_max": sampler.gauges_max,
        "rss_max_bytes": sampler.rss_max or None,
        "cpu_s": (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None,
        "client_cpu_s": _client_cpu_s() - client_before,
        "others_cpu_s": sum((a or 0) - (b or 0) for a, b in zip(others_after, others_before)) if others else None,
    }
    metrics = scenario_metrics(records, wall, scenario.slo, server)
    records.sort(key=lambda r: r.id)
    return {"metrics": metrics, "server": server, "records": records, "wall_s": wall,
            "loadavg_before": load_before, "loadavg_after": loadavg()}


def _warmup(endpoint: Endpoint, n: int, seed: int, concurrency: int = 1, prompt_median: int = 64,
            output_tokens: int = 8) -> None:
    """A few unrelated requests (own seed, never part of a workload) to wake the server up."""
    from sagellm.bench.workloads import RequestSpec, Workload

    requests = tuple(RequestSpec(i, f"Warm-up {seed}-{i}: " + "the quick brown fox jumps over the lazy dog " *
                                 max(1, prompt_median // 10), output_tokens, session=i) for i in range(n))
    workload = Workload(WorkloadSpec("chat", seed=seed), requests, "warm-up")
    asyncio.run(run_load(endpoint, workload, LoadPattern("closed", concurrency), request_timeout_s=300, deadline_s=600))


def _idle_cpu_fraction(peer: RunningPeer, seconds: float = 2.0) -> float | None:
    before = _cpu(peer)
    time.sleep(seconds)
    after = _cpu(peer)
    return None if before is None or after is None else (after - before) / seconds


def _measure_alone(peer: RunningPeer, others: Sequence[RunningPeer], settle_s: float = 0.5) -> None:
    """Pause ``others`` and continue ``peer``, then give it ``settle_s`` to pick up what waited."""
    for other in others:
        other.pause()
    if peer.resume():
        time.sleep(settle_s)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def aggregate(results: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scenario: {peer: metrics}}``: the median over repetitions of every numeric metric."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        grouped.setdefault((r["scenario"], r["peer"]), []).append(r["metrics"])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, peer), runs in grouped.items():
        merged = _merge([m for m in runs])
        merged["repetitions"] = len(runs)
        out.setdefault(scenario, {})[peer] = merged
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _merge(runs: list[dict]) -> dict[str, Any]:
    """Key-wise median of numbers (None ignored), recursively for dicts; other values from the last run."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for m in runs for k in m):
        values = [m.get(key) for m in runs]
        present = [v for v in values if v is not None]
        if present and all(_is_number(v) for v in present):
            merged[key] = median(present)
        elif present and all(isinstance(v, dict) for v in present):
            merged[key] = _merge(present)
        else:
            merged[key] = present[-1] if present else None
    return merged


def ratios(summary: dict[str, dict[str, dict[str, Any]]], reference: str) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{scenario: {peer: {metric: better-ratio vs reference}}}`` for every metric in :data:`METRICS`."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario, peers in summary.items():
        ref = peers.get(reference)
        if ref is None:
            continue
        for peer, metrics in peers.items():
            if peer == reference:
                continue
            out.setdefault(scenario, {})[peer] = {
                m: better_ratio(m, metrics.get(m), ref.get(m)) for m in METRICS
                if isinstance(metrics.get(m), (int, float)) and isinstance(ref.get(m), (int, float))
            }
    return out


def evaluate_targets(suite: Suite, ratio_table: dict) -> list[dict[str, Any]]:
    out = []
    for t in suite.targets:
        value = ratio_table.get(t.scenario, {}).get(t.peer, {}).get(t.metric)
        out.append({"scenario": t.scenario, "metric": t.metric, "peer": t.peer, "reference": t.reference,
                    "minimum": t.minimum, "value": value, "met": value is not None and value >= t.minimum, "text": t.text})
    return out


def run_suite(suite: Suite, peers: Sequence[PeerSpec], options: RunOptions,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run ``suite`` against ``peers``; returns the report dict (see :mod:`sagellm.bench.report`)."""
    from transformers import AutoTokenizer

    reps = options.repetitions or suite.repetitions
    started = datetime.now(timezone.utc)
    scratch = options.out_dir / "tmp" / options.name
    scratch.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "name": options.name, "suite": suite.name, "suite_description": suite.description,
        "started_at": started.strftime("%Y%m%dT%H%M%SZ"), "command": options.command, "git": git_state(),
        "machine": machine, "repetitions": reps, "reference": suite.reference, "peers": [p.name for p in peers],
        "groups": [], "results": [], "notes": [], "logs": str(scratch), "paused_idle_peers": options.pause_idle,
    }
    if options.measure_peak:
        from sagellm.bench.peak import measure_peak

        log("[bench] measuring the machine's peak (matmul FLOP/s, memory bandwidth)")
        report["peak"] = measure_peak()
    else:
        report["peak"] = {}

    selected = [(g, [s for s in g.scenarios if not options.only_scenarios or s.name in options.only_scenarios])
                for g in suite.groups]
    selected = [(g, ss) for g, ss in selected if ss]
    if not selected:
        raise ValueError(f"no scenario selected; suite {suite.name} has: {', '.join(suite.scenario_names())}")

    # build every workload first: the progress bar knows the total, and bad parameters fail before servers start
    plan = []
    total = 0
    for group, scenarios in selected:
        model = resolve_model(group.model)
        tokenizer = AutoTokenizer.from_pretrained(model)
        workloads = {(s.name, r): build_workload(s.workload.with_seed(s.workload.seed + 1000 * r), tokenizer)
                     for s in scenarios for r in range(reps)}
        total += sum(len(w.requests) for w in workloads.values()) * len(peers)
        plan.append((group, scenarios, model, tokenizer, workloads))
    bar = _progress(total, options.progress)

    try:
        for group, scenarios, model, tokenizer, workloads in plan:
            shape = model_shape(model)
            group_info: dict[str, Any] = {"name": group.name, "model_key": group.model, "model": model, "model_shape": shape,
                                          "profile": {**group.profile.__dict__, "kv_tokens": group.profile.kv_tokens},
                                          "peers": [], "scenarios": []}
            for s in scenarios:
                info = s.describe()
                w0 = workloads[(s.name, 0)]
                info["workload_summary"] = w0.summary()
                if s.workload.kind in ("multi_turn", "docqa"):
                    info["prefix"] = prefix_stats(w0, tokenizer, group.profile.block_size, group.profile.kv_tokens)
                group_info["scenarios"].append(info)
            report["groups"].append(group_info)
            running: list[RunningPeer] = []
            try:
                for spec in peers:
                    log(f"[bench] {group.name}: starting {spec.name} ({spec.kind}) on {Path(model).name}")
                    peer = start_peer(spec, model, group.profile, scratch / group.name,
                                      **({"vllm_python": options.vllm_python} if options.vllm_python else {}))
                    running.append(peer)
                    _warmup(Endpoint(peer.base_url, peer.model_name), 4, seed=7, concurrency=4, prompt_median=256,
                            output_tokens=16)
                    info = peer.describe()
                    info["idle_cpu_fraction"] = _idle_cpu_fraction(peer)
                    group_info["peers"].append(info)
                    log(f"[bench] {group.name}: {spec.name} ready at {peer.base_url} in {peer.startup_s:.1f} s "
                        f"(idle CPU {info['idle_cpu_fraction'] or 0:.2f} cores)")
                    if options.pause_idle:
                        peer.pause()  # the next peers start up (and are measured) without it
                for si, scenario in enumerate(scenarios):
                    for rep in range(reps):
                        workload = workloads[(scenario.name, rep)]
                        shift = (si + rep) % len(running)
                        for peer in running[shift:] + running[:shift]:
                            if bar is not None:
                                bar.set_description(f"{scenario.name} r{rep} {peer.spec.name}")
                            others = [o for o in running if o is not peer]
                            if options.pause_idle:
                                _measure_alone(peer, others)
                            res = run_scenario(peer, others, scenario, workload,
                                               on_done=(lambda _r: bar.update(1)) if bar is not None else None)
                            if scenario.workload.kind == "roofline":
                                res["metrics"].update(roofline_metrics(res["records"], shape, group.profile.dtype,
                                                                       report["peak"]))
                            entry = {"group": group.name, "scenario": scenario.name, "peer": peer.spec.name,
                                     "repetition": rep, "workload_digest": workload.digest(), **res}
                            entry["records"] = [r.to_dict() for r in res["records"]] if options.keep_requests else []
                            report["results"].append(entry)
                            m = res["metrics"]
                            log(f"[bench] {scenario.name} r{rep} {peer.spec.name}: {m['output_throughput'] or 0:.1f} out tok/s, "
                                f"TTFT p50 {(m['ttft_p50'] or 0) * 1000:.0f} ms, E2E p50 {(m['e2e_p50'] or 0) * 1000:.0f} ms, "
                                f"{m['errors']} errors")
            finally:
                for peer in running:
                    peer.stop()
    finally:
        if bar is not None:
            bar.close()

    report["finished_at"] = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report["duration_s"] = (datetime.now(timezone.utc) - started).total_seconds()
    report["summary"] = aggregate(report["results"])
    report["ratios"] = ratios(report["summary"], suite.reference)
    report["targets"] = evaluate_targets(suite, report["ratios"])
    report["notes"] += _notes(report)
    return report


def _notes(report: dict[str, Any]) -> list[str]:
    """Facts a reader needs to interpret the numbers, derived from the data."""
    notes = []
    for scenario, peers in report["summary"].items():
        for peer, m in peers.items():
            if m.get("errors"):
                notes.append(f"{scenario}/{peer}: {m['errors']} failed requests (see the JSON records)")
    one_chunk = sorted({p for peers in report["summary"].values() for p, m in peers.items()
                        if (m.get("tokens_per_chunk") or 0) > 4})
    if one_chunk:
        notes.append(
            f"{', '.join(one_chunk)}: streaming delivers many tokens per chunk (see tokens_per_chunk); TTFT, TPOT and ITL "
            "measured at the client then reflect when tokens reach the client, not when the engine computed them.")
    return notes
