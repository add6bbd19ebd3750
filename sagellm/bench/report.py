"""Write a run's report: JSON (versioned schema), Markdown tables and a PNG of plots.

Files go to ``<out>/<name>.json|.md|.png``. The JSON is the source of truth; the Markdown and the PNG are
rendered from it alone, so ``sage bench report FILE.json`` re-renders them. Schema ``sagellm-bench/1``,
top-level keys:

* ``schema``, ``name``, ``suite``, ``started_at``/``finished_at``/``duration_s``, ``command``, ``git``, ``machine``,
  ``peak`` (measured matmul FLOP/s per dtype and memory bandwidth), ``repetitions``, ``reference``, ``peers``;
* ``groups``: per model + server profile: model shape, profile (KV budget), each peer's command line,
  environment, versions, start-up time and idle CPU, and each scenario's workload summary, load and SLOs;
* ``results``: one entry per (scenario, peer, repetition): ``metrics``, ``server`` samples, per-request
  ``records``;
* ``summary``: ``{scenario: {peer: metrics}}``, medians over repetitions;
* ``ratios``: ``{scenario: {peer: {metric: ratio}}}`` against ``reference``, oriented so > 1 = better;
* ``targets``: the suite's goals with value and met / not met; ``notes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sagellm.bench import SCHEMA_VERSION

__all__ = ["load_report", "render_markdown", "render_plots", "write_report"]


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report JSON; raises ``ValueError`` for another schema version."""
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, this sagellm reads {SCHEMA_VERSION!r}")
    return data


def write_report(report: dict[str, Any], out_dir: Path, plots: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / report["name"]
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    paths["json"].write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    if plots:
        png = stem.with_suffix(".png")
        if render_plots(report, png):
            paths["png"] = png
            report["plots"] = png.name
    paths["md"].write_text(render_markdown(report))
    return paths


def write_result_files(out_dir: Path, stem: str, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``OUT_DIR/STEM.json`` (the report, indented) and ``OUT_DIR/STEM.md``; returns both paths.

    For the standalone benchmark scripts; suite reports go through :func:`write_report`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(markdown)
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- formatting helpers


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.0f}" if v * 1000 >= 10 else f"{v * 1000:.1f}")


def _int(v: float | None) -> str:
    return "–" if v is None else f"{int(round(v))}"


def _num(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _trio(m: dict, name: str, fmt=_ms) -> str:
    return " / ".join(fmt(m.get(f"{name}_p{p}")) for p in (50, 95, 99))


def _gflops(v: float | None) -> str:
    return "–" if not v else f"{v / 1e9:,.1f} GFLOP/s"


# --------------------------------------------------------------------------- markdown


def render_markdown(report: dict[str, Any]) -> str:
    m, peak, git = report["machine"], report.get("peak") or {}, report.get("git") or {}
    ref = report["reference"]
    lines = [
        f"# Benchmark `{report['name']}` (suite `{report['suite']}`)",
        "",
        f"{report.get('suite_description', '')}",
        "",
        f"- Machine: {m.get('cpu_model')}, {m.get('usable_cpus')} usable CPUs, {m.get('mem_total_gib')} GiB RAM, "
        f"{'; '.join(m.get('gpus') or []) or 'no GPU'}; load average at start {m.get('loadavg_1_5_15')}",
    ]
    if peak:
        flops = peak.get("matmul_flops") or {}
        lines.append(f"- Measured peak: float32 matmul {_gflops(flops.get('float32'))}, bfloat16 {_gflops(flops.get('bfloat16'))}, "
                     f"memory bandwidth {(peak.get('mem_bandwidth_bytes_per_s') or 0) / 1e9:.1f} GB/s ({peak.get('method')})")
    lines += [
        f"- Commit `{git.get('commit')}`" + (" (working tree had uncommitted changes)" if git.get("dirty") else ""),
        f"- Started {report['started_at']}, took {report.get('duration_s', 0) / 60:.1f} min; {report['repetitions']} "
        "repetition(s) per scenario, peers interleaved (rotated order per scenario and repetition), one peer measured at a time"
        + ("; the started servers not being measured were paused (SIGSTOP)" if report.get("paused_idle_peers") else
           "; the other servers stayed up, idle"),
        f"- Ratios are against **{ref}** and oriented so that **> 1 means better than {ref}**: throughput and goodput "
        f"peer / {ref}; latency, CPU cost and prefill tokens {ref} / peer.",
        f"- Command: `{' '.join(report.get('command') or [])}`",
        "",
    ]
    lines += _peers_md(report)
    if report.get("ratios"):
        lines += _headline_md(report)
    if report.get("targets"):
        lines += ["## Targets", ""]
        for t in report["targets"]:
            if t["value"] is None:  # the run left the scenario (or one of its peers) out
                lines.append(f"- {t['text']}: not measured in this run (target ≥ {t['minimum']:g}x)")
                continue
            lines.append(f"- {t['text']}: {_x(t['value'])} (target ≥ {t['minimum']:g}x) — "
                         + ("**met**" if t["met"] else "**NOT met**"))
        lines.append("")
    lines += _scenarios_md(report)
    roof = _roofline_md(report)
    if roof:
        lines += roof
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("plots"):
        lines += ["## Plots", "", f"![plots]({report['plots']})", ""]
    return "\n".join(lines)


def _peers_md(report: dict[str, Any]) -> list[str]:
    lines = ["## Peers", ""]
    for g in report["groups"]:
        p = g["profile"]
        shape = g["model_shape"]
        lines += [
            f"Group **{g['name']}**: model `{Path(g['model']).name}` ({shape['model_type']}, hidden {shape['hidden_size']}, "
            f"{shape['num_layers']} layers, {shape['num_heads']}/{shape['num_kv_heads']} heads, vocab {shape['vocab_size']}, "
            f"max positions {shape['max_position_embeddings']}), {p['dtype']}; device KV budget {p['kv_blocks']} blocks x "
            f"{p['block_size']} tokens = {p['kv_tokens']} tokens for every started peer; max length {p['max_model_len']}, "
            f"max batch {p['max_batch_size']}; sagellm tiers {','.join(p['sagellm_kv_tiers'])} "
            f"(host {p['sagellm_host_cache_gib']} GiB)",
            "",
            "| peer | kind | start-up s | idle CPU (cores) | versions | environment |",
            "|---|---|---:|---:|---|---|",
        ]
        for peer in g["peers"]:
            versions = ", ".join(f"{k} {v}" for k, v in (peer.get("versions") or {}).items() if v)
            env = ", ".join(f"`{k}={v}`" for k, v in (peer.get("env") or {}).items())
            lines.append(f"| {peer['name']} | {peer['kind']} | {peer['startup_s']:.1f} | {_num(peer.get('idle_cpu_fraction'), 2)} "
                         f"| {versions} | {env} |")
        lines.append("")
    lines.append("Command lines are in the JSON (`groups[].peers[].command`).")
    lines.append("")
    return lines


_HEADLINE = (("output_throughput", "output tok/s"), ("ttft_p50", "TTFT p50"), ("tpot_p50", "TPOT p50"),
             ("e2e_p50", "E2E p50"), ("goodput_tokens", "goodput"), ("cpu_s_per_1k_output_tokens", "CPU-s / 1K tok"),
             ("prefill_tokens_computed", "prefill computed"))


def _headline_md(report: dict[str, Any]) -> list[str]:
    ref = report["reference"]
    peers = [p for p in report["peers"] if p != ref]
    lines = [f"## Ratios to {ref} (> 1 = better than {ref})", ""]
    for peer in peers:
        lines += [f"**{peer}**", "", "| scenario | " + " | ".join(label for _, label in _HEADLINE) + " |",
                  "|---|" + "---:|" * len(_HEADLINE)]
        for scenario, by_peer in report["ratios"].items():
            r = by_peer.get(peer, {})
            lines.append(f"| {scenario} | " + " | ".join(_x(r.get(k)) for k, _ in _HEADLINE) + " |")
        lines.append("")
    return lines


def _scenarios_md(report: dict[str, Any]) -> list[str]:
    lines = ["## Scenarios", "", "Latencies in ms (E2E in s) as p50 / p95 / p99; throughput over the scenario's wall time.", ""]
    infos = {s["name"]: (g, s) for g in report["groups"] for s in g["scenarios"]}
    for scenario, by_peer in report["summary"].items():
        g, info = infos.get(scenario, ({}, {}))
        w = info.get("workload_summary", {})
        lines += [f"### {scenario}", "", f"- {w.get('description', '')}",
                  f"- {info.get('load', '')}; {w.get('requests')} requests, {w.get('prompt_tokens')} prompt tokens "
                  f"(local tokenizer), {w.get('output_tokens')} output tokens; SLO " +
                  (", ".join(f"{k}: TTFT ≤ {v['ttft_s']} s, TPOT ≤ {v['tpot_s']} s" for k, v in info.get("slo", {}).items())
                   or "none")]
        if info.get("prefix"):
            px = info["prefix"]
            lines.append(f"- Prefix working set {px['prefix_working_set_tokens']} tokens = "
                         f"{px.get('working_set_over_device_kv')}x the device KV budget ({px.get('device_kv_tokens')} tokens); "
                         f"{px.get('reuses_beyond_device_kv')}/{px['reuses']} prefix reuses come after more than the budget "
                         "of other blocks")
        lines += [
            "",
            "| peer | req (err) | out tok/s | total tok/s | TTFT ms | TPOT ms | ITL ms | E2E s | tok/chunk | SLO met "
            "| goodput tok/s | prefill computed | hit rate (per tier) | KV peak | CPU-s / 1K tok | RSS MiB |",
            "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for peer, m in by_peer.items():
            tiers = m.get("prefix_hit_rate_by_tier") or {}
            hit = "–" if m.get("prefix_hit_rate") is None else _pct(m["prefix_hit_rate"]) + (
                " (" + ", ".join(f"{t} {_pct(v)}" for t, v in tiers.items()) + ")" if tiers else "")
            lines.append(
                f"| {peer} | {_int(m.get('requests'))} ({_int(m.get('errors'))}) | {_num(m.get('output_throughput'))} "
                f"| {_num(m.get('total_throughput'))} | {_trio(m, 'ttft')} | {_trio(m, 'tpot')} | {_trio(m, 'itl')} "
                f"| {_trio(m, 'e2e', lambda v: _num(v, 2))} | {_num(m.get('tokens_per_chunk'))} | {_pct(m.get('slo_attainment'))} "
                f"| {_num(m.get('goodput_tokens'))} | {_num(m.get('prefill_tokens_computed'), 0)} | {hit} "
                f"| {_pct(m.get('kv_usage_max'))} | {_num(m.get('cpu_s_per_1k_output_tokens'), 2)} | {_num(m.get('rss_max_mib'), 0)} |")
        by_class = {p: m.get("slo_attainment_by_class") for p, m in by_peer.items() if isinstance(m.get("slo_attainment_by_class"), dict)}
        if by_class and any(len(v) > 1 for v in by_class.values()):
            lines.append("")
            lines.append("SLO attainment by class: " + "; ".join(
                f"{p}: " + ", ".join(f"{c} {_pct(v)}" for c, v in classes.items()) for p, classes in by_class.items()))
        lines.append("")
    return lines


def _roofline_md(report: dict[str, Any]) -> list[str]:
    rows = []
    for scenario, by_peer in report["summary"].items():
        for peer, m in by_peer.items():
            if m.get("mfu_prefill") is not None or m.get("mbu_decode") is not None:
                rows.append(f"| {scenario} | {peer} | {_num(m.get('prefill_probe_tokens'), 0)} | {_num(m.get('prefill_tokens_per_s_batch1'))} "
                            f"| {_gflops(m.get('prefill_flops_per_s'))} | {_pct(m.get('mfu_prefill'))} "
                            f"| {_num(m.get('decode_tokens_per_s_batch1'))} | {_num((m.get('decode_bytes_per_token') or 0) / 2**20, 1)} "
                            f"| {_pct(m.get('mbu_decode'))} |")
    if not rows:
        return []
    return ["## Roofline (batch 1)", "",
            "MFU = model FLOPs of the prefill / its E2E time / measured float32 matmul peak; MBU = bytes one decode step "
            "must read (weights + KV) x decode steps/s / measured memory bandwidth. Decode step time = (E2E of a "
            "many-token probe - E2E of a 1-token probe with the same prompt length) / (tokens - 1).", "",
            "| scenario | peer | prefill tokens | prefill tok/s | prefill FLOP/s | MFU prefill | decode tok/s | MiB read / token "
            "| MBU decode |", "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, ""]


# --------------------------------------------------------------------------- plots


def render_plots(report: dict[str, Any], path: Path) -> bool:
    """One PNG: output throughput per scenario and peer, ratios to the reference, the latency-throughput
    curve of the closed-loop chat scenarios, and TTFT p50 per scenario. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary, ref = report["summary"], report["reference"]
    scenarios = list(summary)
    peers = list(report["peers"])
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    xs = range(len(scenarios))

    def bars(ax, metric: str, title: str, scale: float = 1.0, log: bool = True, ratio: bool = False) -> None:
        shown = [p for p in peers if not (ratio and p == ref)]
        w = 0.8 / max(1, len(shown))
        for i, peer in enumerate(shown):
            if ratio:
                values = [(report.get("ratios", {}).get(s, {}).get(peer, {}).get(metric) or 0) for s in scenarios]
            else:
                values = [((summary[s].get(peer) or {}).get(metric) or 0) * scale for s in scenarios]
            ax.bar([x + i * w for x in xs], values, w, label=peer)
        ax.set_xticks([x + w * (len(shown) - 1) / 2 for x in xs])
        ax.set_xticklabels(scenarios, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        if ratio:
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][0], "output_throughput", "output throughput (tok/s, log)")
    bars(axes[0][1], "output_throughput", f"output throughput / {ref} (> 1 better)", log=False, ratio=True)
    bars(axes[1][1], "ttft_p50", "TTFT p50 (ms, log)", scale=1000)

    ax = axes[1][0]
    chat = [(s, g_s) for g in report["groups"] for g_s in g["scenarios"] for s in scenarios
            if g_s["name"] == s and g_s["workload"]["kind"] == "chat" and g_s["load"].startswith("closed")]
    for peer in peers:
        pts = [((summary[s].get(peer) or {}).get("output_throughput"), (summary[s].get(peer) or {}).get("e2e_p50"), info["load"])
               for s, info in chat]
        pts = [(x, y, lab) for x, y, lab in pts if x and y]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer)
            for x, y, lab in pts:
                ax.annotate(lab.rsplit(" ", 1)[-1], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("output throughput (tok/s)")
    ax.set_ylabel("E2E latency p50 (s)")
    ax.set_title("latency vs throughput, chat at closed-loop concurrency (labels)", fontsize=10)
    ax.grid(alpha=0.3)
    if chat:
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['name']} — {report['machine'].get('cpu_model')}, {report['machine'].get('usable_cpus')} CPUs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
