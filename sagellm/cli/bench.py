"""`sage bench`: run benchmark suites against peers, render reports, gate a run against a baseline."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Benchmarks: sagellm vs stock LMDeploy vs vLLM (or any OpenAI endpoint), reports, perf gate.",
                  no_args_is_help=True)


def _out_default() -> Path:
    from sagellm.bench.machine import REPO_ROOT

    bench = REPO_ROOT / "benchmarks"
    return bench / "results" if bench.is_dir() else Path.cwd() / "bench-results"


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param {item!r}: expected KEY=VALUE (VALUE as JSON, e.g. 64 or [16,512])")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@app.command("run")
def run(
    suite: str = typer.Option("report", help="Suite to run: report | gate | smoke (see `sage bench suites`)."),
    peers: Optional[str] = typer.Option(None, help="Comma-separated peers to start: sagellm, lmdeploy-stock, vllm, or "
                                        "NAME=KIND for a second instance of a kind. Default: the suite's."),
    endpoint: list[str] = typer.Option([], help="An already running OpenAI-compatible server as NAME=URL[@PID] "
                                       "(repeatable; PID enables CPU accounting)."),
    peer_env: list[str] = typer.Option([], help="Environment for a started peer, PEER:KEY=VALUE (repeatable)."),
    scenarios: Optional[str] = typer.Option(None, help="Only these scenarios of the suite (comma-separated)."),
    repetitions: Optional[int] = typer.Option(None, help="Repetitions per scenario (default: the suite's)."),
    reference: Optional[str] = typer.Option(None, help="Peer the ratios are taken against (default: the suite's, "
                                            "if it is among the peers, else the first peer)."),
    workload: Optional[str] = typer.Option(None, help="Ad-hoc run instead of a suite: workload kind "
                                           "(chat, multi_turn, docqa, long_context, mixed_slo, roofline)."),
    param: list[str] = typer.Option([], help="Ad-hoc workload parameter KEY=VALUE (repeatable)."),
    concurrency: int = typer.Option(8, help="Ad-hoc: closed-loop concurrency."),
    rate: Optional[float] = typer.Option(None, help="Ad-hoc: open-loop Poisson rate (requests/s) instead of closed loop."),
    model: str = typer.Option("tiny", help="Ad-hoc: model key (tiny, tiny-long, 100m) or checkpoint directory."),
    kv_blocks: int = typer.Option(1024, help="Ad-hoc: device KV budget in blocks for every started peer."),
    max_model_len: int = typer.Option(4096, help="Ad-hoc: max sequence length of started peers."),
    seed: int = typer.Option(0, help="Ad-hoc: workload seed."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: benchmarks/results in a checkout)."),
    name: Optional[str] = typer.Option(None, help="File stem (default: <suite>-<UTC timestamp>)."),
    vllm_python: Optional[Path] = typer.Option(None, help="Interpreter of vLLM's venv (default .venv-vllm/bin/python)."),
    peak: bool = typer.Option(True, help="Measure the machine's peak FLOP/s and bandwidth first (MFU/MBU)."),
    plots: bool = typer.Option(True, help="Write the PNG of plots."),
    progress: bool = typer.Option(True, help="Progress bar on stderr."),
    pause_idle: bool = typer.Option(True, help="Pause (SIGSTOP) the started servers not being measured, so each "
                                    "peer has the machine to itself; --no-pause-idle leaves them running."),
) -> None:
    """Run a suite (or an ad-hoc workload) against the peers, interleaved, and write JSON + Markdown + PNG."""
    from dataclasses import replace

    from sagellm.bench.loadgen import LoadPattern
    from sagellm.bench.peers import ServerProfile, parse_peers
    from sagellm.bench.report import write_report
    from sagellm.bench.runner import RunOptions, run_suite
    from sagellm.bench.suites import Group, Scenario, Suite, get_suite
    from sagellm.bench.workloads import WorkloadSpec

    try:
        if workload:
            load = LoadPattern("poisson", rate=rate, seed=seed) if rate else LoadPattern("closed", concurrency)
            scenario_name = f"{workload}_" + (f"r{rate:g}" if rate else f"c{concurrency}")
            profile = ServerProfile(name="adhoc", kv_blocks=kv_blocks, max_model_len=max_model_len)
            chosen = Suite("adhoc", f"ad-hoc {workload} run", (Group("adhoc", model, profile, (
                Scenario(scenario_name, WorkloadSpec(workload, _parse_params(param), seed), load),)),),
                reference="", default_peers="sagellm")
        else:
            chosen = get_suite(suite)
        peer_specs = parse_peers(peers or ("" if endpoint and not peers else chosen.default_peers), endpoint, peer_env)
    except ValueError as err:
        _fail(str(err))
    names = [p.name for p in peer_specs]
    ref = reference or (chosen.reference if chosen.reference in names else names[0])
    if ref not in names:
        _fail(f"--reference {ref!r} is not among the peers ({', '.join(names)})")
    chosen = replace(chosen, reference=ref)
    stem = name or f"{chosen.name}-{_timestamp()}"
    out_dir = out or _out_default()
    options = RunOptions(out_dir=out_dir, name=stem, repetitions=repetitions, vllm_python=vllm_python,
                         progress=progress, measure_peak=peak, pause_idle=pause_idle,
                         only_scenarios=[s.strip() for s in (scenarios or "").split(",") if s.strip()],
                         command=["sage", "bench", *sys.argv[sys.argv.index("run"):]] if "run" in sys.argv else sys.argv)
    try:
        report = run_suite(chosen, peer_specs, options)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        _fail(str(err), 1)
    paths = write_report(report, out_dir, plots=plots)
    typer.echo(Path(paths["md"]).read_text())
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("report")
def report_cmd(
    path: Path = typer.Argument(..., help="A report JSON written by `sage bench run`."),
    plots: bool = typer.Option(True, help="Re-render the PNG too."),
) -> None:
    """Re-render the Markdown (and PNG) of a report JSON."""
    from sagellm.bench.report import load_report, render_markdown, render_plots

    try:
        data = load_report(path)
    except (OSError, ValueError) as err:
        _fail(str(err))
    if plots and render_plots(data, path.with_suffix(".png")):
        data["plots"] = path.with_suffix(".png").name
    path.with_suffix(".md").write_text(render_markdown(data))
    typer.echo(f"wrote {path.with_suffix('.md')}" + (f" and {path.with_suffix('.png')}" if plots else ""))


@app.command("gate")
def gate_cmd(
    baseline: Optional[Path] = typer.Option(None, help="Baseline JSON (default: benchmarks/baselines/gate-cpu.json)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Gate this existing run report instead of running."),
    candidate: Optional[str] = typer.Option(None, help="Peer to gate (default: the baseline's candidate)."),
    peers: Optional[str] = typer.Option(None, help="Peers to start (default: the baseline's candidate and reference)."),
    peer_env: list[str] = typer.Option([], help="Environment for a started peer, PEER:KEY=VALUE (repeatable)."),
    record: bool = typer.Option(False, "--record", help="Write the measured ratios as the new baseline (keeps tolerances)."),
    self_test: bool = typer.Option(False, "--self-test", help="Also run a copy of the candidate slowed down by the "
                                   "`slowdown` plugin in the same run, and fail unless the gate catches it."),
    inject_delay_ms: float = typer.Option(500.0, help="Delay per generation request of the slowed copy (--self-test)."),
    out: Optional[Path] = typer.Option(None, help="Where the run's report goes (default: benchmarks/results/tmp)."),
    progress: bool = typer.Option(True, help="Progress bar on stderr."),
) -> None:
    """Run the gate suite (or read --report) and compare its ratios with the baseline; exit 1 on a regression."""
    from dataclasses import replace

    from sagellm.bench.gate import evaluate, load_baseline, record_baseline
    from sagellm.bench.peers import parse_peers
    from sagellm.bench.report import load_report, write_report
    from sagellm.bench.runner import RunOptions, run_suite
    from sagellm.bench.suites import get_suite

    from sagellm.bench.machine import REPO_ROOT

    baseline = baseline or REPO_ROOT / "benchmarks" / "baselines" / "gate-cpu.json"
    slowed = "slowed"
    try:
        base = load_baseline(baseline)
    except (OSError, ValueError, TypeError) as err:
        _fail(f"baseline {baseline}: {err}")
    if report is not None:
        try:
            data = load_report(report)
        except (OSError, ValueError) as err:
            _fail(str(err))
    else:
        suite = replace(get_suite(base.suite), reference=base.reference)
        peer_list = peers or f"{base.candidate},{base.reference}"
        env = list(peer_env)
        if self_test:
            peer_list += f",{slowed}={base.candidate}"
            env.append(f"{slowed}:SAGELLM_BENCH_INJECT_DELAY_MS={inject_delay_ms:g}")
        try:
            specs = parse_peers(peer_list, (), env)
        except ValueError as err:
            _fail(str(err))
        out_dir = out or _out_default() / "tmp"
        options = RunOptions(out_dir=out_dir, name=f"gate-{_timestamp()}", progress=progress, measure_peak=False,
                             command=["sage", "bench", "gate", *sys.argv[sys.argv.index("gate") + 1:]] if "gate" in sys.argv
                             else sys.argv)
        try:
            data = run_suite(suite, specs, options)
        except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
            _fail(str(err), 1)
        paths = write_report(data, out_dir, plots=False)
        typer.echo(f"[gate] run report: {paths['json']}")
    if record:
        new = record_baseline(data["summary"], base, data["name"], data.get("results", ()))
        baseline.write_text(json.dumps(new.to_dict(), indent=1) + "\n")
        typer.echo(f"[gate] recorded {len(new.checks)} ratios into {baseline}")
        return

    def gate_one(who: str) -> bool:
        results = evaluate(data["summary"], base, who, data.get("results", ()))
        typer.echo(f"[gate] {who} vs {base.reference}, baseline {baseline}:")
        for r in results:
            typer.echo("  " + r.line())
        failed = [r for r in results if not r.passed]
        typer.echo(f"[gate] {who}: {'FAILED' if failed else 'passed'}: {len(results) - len(failed)}/{len(results)} checks ok")
        return not failed

    ok = gate_one(candidate or base.candidate)
    if self_test:
        caught = not gate_one(slowed)
        typer.echo(f"[gate] self-test: the gate {'caught' if caught else 'did NOT catch'} the injected "
                   f"{inject_delay_ms:g} ms slowdown of {slowed}")
        ok = ok and caught
    if not ok:
        raise typer.Exit(1)


@app.command("peak")
def peak_cmd() -> None:
    """Measure and print this machine's matmul FLOP/s and memory bandwidth (the MFU/MBU denominators)."""
    from sagellm.bench.peak import measure_peak

    typer.echo(json.dumps(measure_peak(), indent=1))


@app.command("suites")
def suites_cmd() -> None:
    """List the suites, their groups and scenarios."""
    from sagellm.bench.suites import SUITES, get_suite

    for key in SUITES:
        s = get_suite(key)
        typer.echo(f"{s.name}: {s.description} (reference {s.reference}, default peers {s.default_peers}, "
                   f"{s.repetitions} repetition(s))")
        for g in s.groups:
            typer.echo(f"  group {g.name}: model {g.model}, KV {g.profile.kv_blocks} blocks x {g.profile.block_size}, "
                       f"max length {g.profile.max_model_len}")
            for sc in g.scenarios:
                typer.echo(f"    {sc.name}: {sc.workload.kind} {sc.workload.params or ''} -- {sc.load.describe()}")


@app.command("workloads")
def workloads_cmd() -> None:
    """List the workload kinds and their parameters with defaults."""
    from sagellm.bench.workloads import WORKLOADS

    for kind, spec in WORKLOADS.items():
        params = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in spec.defaults.items())
        typer.echo(f"{kind}: {params}")
