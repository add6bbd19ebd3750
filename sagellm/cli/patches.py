"""`sage patches`: Maintain the LMDeploy patch series (apply, check, export, lint, rebase).

Argument handling only: every command forwards to ``sagellm.patchkit`` (the same code
``scripts/apply_patches.sh`` runs), so output and exit codes are identical.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Maintain the LMDeploy patch series (apply, check, export, lint, rebase).", no_args_is_help=True)


def _run(ctx: typer.Context, *args: str) -> None:
    from sagellm.patchkit.cli import main

    code = main([*(ctx.obj or []), *args])
    if code:
        raise typer.Exit(code)


@app.callback()
def _paths(
    ctx: typer.Context,
    repo_root: Path | None = typer.Option(None, help="Repository root (default: this checkout)."),
    upstream: Path | None = typer.Option(None, help="UPSTREAM pin file; its folder holds series and patches."),
    cache_dir: Path | None = typer.Option(
        None, help="Download cache (default: ${SAGELLM_CACHE_DIR:-~/.cache/sagellm}/upstream)."
    ),
) -> None:
    options: list[str] = []
    for flag, value in (("--repo-root", repo_root), ("--upstream", upstream), ("--cache-dir", cache_dir)):
        if value is not None:
            options += [flag, str(value)]
    ctx.obj = options


@app.command()
def apply(ctx: typer.Context) -> None:
    """Fetch + verify + extract the pinned LMDeploy if needed, apply the series, swap the tree in atomically."""
    _run(ctx, "apply")


@app.command()
def check(
    ctx: typer.Context,
    no_roundtrip: bool = typer.Option(False, "--no-roundtrip", help="Skip the workspace -> export byte comparison."),
) -> None:
    """Rebuild pristine + series in a temp dir, list drifted files, lint headers, round-trip export (exit 1 on drift)."""
    _run(ctx, "check", *(["--no-roundtrip"] if no_roundtrip else []))


@app.command()
def reverse(ctx: typer.Context) -> None:
    """Put the pristine (unpatched) LMDeploy tree in place."""
    _run(ctx, "reverse")


@app.command()
def clean(
    ctx: typer.Context,
    pristine: bool = typer.Option(False, "--pristine", help="Also remove the extracted pristine copy."),
) -> None:
    """Remove the generated tree, pyproject.toml and stamp."""
    _run(ctx, "clean", *(["--pristine"] if pristine else []))


@app.command()
def lint(ctx: typer.Context) -> None:
    """Check the series and every patch header (Subject, Why, Upstream-Status, Hooks, Tests)."""
    _run(ctx, "lint")


@app.command()
def workspace(ctx: typer.Context, directory: Path = typer.Argument(..., metavar="DIR")) -> None:
    """Create a git repo at DIR: pristine tree tagged upstream-VERSION, one commit per patch."""
    _run(ctx, "workspace", str(directory))


@app.command()
def export(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., metavar="DIR"),
    to: Path | None = typer.Option(None, help="Destination folder (default: patches/lmdeploy)."),
    base: str | None = typer.Option(None, help="Tag of the pristine tree (default: the single upstream-* tag)."),
) -> None:
    """Write DIR's commits since the upstream tag back as numbered patches + series."""
    extra = [*(["--to", str(to)] if to else []), *(["--base", base] if base else [])]
    _run(ctx, "export", str(directory), *extra)


@app.command()
def rebase(
    ctx: typer.Context,
    version: str = typer.Argument(..., metavar="VERSION"),
    out: Path | None = typer.Option(None, help="Output folder (default: patches/rebased/lmdeploy-VERSION)."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the temporary git repositories."),
) -> None:
    """Carry the series to another LMDeploy release; report clean/fuzz/3way/conflict per patch."""
    _run(ctx, "rebase", version, *(["--out", str(out)] if out else []), *(["--keep-work"] if keep_work else []))


@app.command()
def compat(
    ctx: typer.Context,
    versions: list[str] | None = typer.Argument(
        None, metavar="[VERSION]...", help="Releases (default: every release after the pin)."
    ),
    output: Path | None = typer.Option(None, help="Table file (default: patches/COMPATIBILITY.md)."),
) -> None:
    """Rebase onto several releases and rewrite patches/COMPATIBILITY.md."""
    _run(ctx, "compat", *(versions or []), *(["--output", str(output)] if output else []))
