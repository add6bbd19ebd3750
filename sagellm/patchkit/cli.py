"""Argument parsing for ``python3 -m sagellm.patchkit`` (``sage patches`` and the shell wrapper call it too)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sagellm.patchkit.errors import EXIT_CODE_HELP, ExitCode, PatchkitError
from sagellm.patchkit.layout import Layout

PROG = "python3 -m sagellm.patchkit"


def _exit_code_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {int(code)}  {text}" for code, text in EXIT_CODE_HELP.items())


def _add_path_options(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_argument_group("paths (defaults: this checkout)")
    group.add_argument(
        "--repo-root", type=Path, default=default, help="repository root (default: the checkout holding this package)"
    )
    group.add_argument(
        "--upstream",
        type=Path,
        default=default,
        help="UPSTREAM pin file; its folder holds series and patches (default: ROOT/patches/lmdeploy/UPSTREAM)",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=default,
        help="download cache (default: ${SAGELLM_CACHE_DIR:-~/.cache/sagellm}/upstream)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch, verify, patch and maintain the pinned LMDeploy tree (third_party/lmdeploy).",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_path_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            aliases=list(aliases),
            epilog=_exit_code_epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_path_options(p, argparse.SUPPRESS)
        p.set_defaults(command=name)
        return p

    command(
        "apply",
        "fetch + verify + extract the pinned release if needed, apply the series, swap the tree in atomically (default)",
    )
    p = command(
        "check",
        "rebuild pristine + series in a temporary directory, list drifted files, lint headers, round-trip export",
        aliases=["verify"],
    )
    p.add_argument("--no-roundtrip", action="store_true", help="skip the workspace -> export byte-for-byte comparison")
    command("reverse", "put the pristine (unpatched) tree in place")
    p = command("clean", "remove the generated tree, pyproject.toml and stamp")
    p.add_argument("--pristine", action="store_true", help="also remove the extracted pristine copy")
    command("lint", "check the series and every patch header (Subject, Why, Upstream-Status, Hooks, Tests)")
    p = command("workspace", "create a git repo at DIR: pristine tree tagged upstream-VERSION, one commit per patch")
    p.add_argument("dir", type=Path, metavar="DIR")
    p = command("export", "write the commits since the upstream tag in DIR back as numbered patches + series")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--to", type=Path, default=None, help="destination folder (default: the pinned series folder)")
    p.add_argument(
        "--base", default=None, help="tag or commit of the pristine tree (default: the single upstream-* tag)"
    )
    p = command("rebase", "carry the series to another release; report clean/fuzz/3way/conflict per patch")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: patches/rebased/lmdeploy-VERSION)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary git repositories for inspection")
    p = command("compat", "rebase onto several releases and rewrite patches/COMPATIBILITY.md")
    p.add_argument(
        "versions",
        nargs="*",
        metavar="VERSION",
        help="releases (default: every release after the pin, see compat.DEFAULT_RELEASES)",
    )
    p.add_argument("--output", type=Path, default=None, help="table file (default: patches/COMPATIBILITY.md)")
    return parser


def layout_from_args(args: argparse.Namespace) -> Layout:
    return Layout.default(
        repo_root=getattr(args, "repo_root", None),
        upstream_file=getattr(args, "upstream", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


def _out(message: str) -> None:
    print(message, flush=True)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_apply(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.ops import apply

    apply(layout, _out)
    return ExitCode.OK


def _cmd_reverse(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.ops import reverse

    reverse(layout, _out)
    return ExitCode.OK


def _cmd_clean(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.ops import clean

    clean(layout, _out, pristine=args.pristine)
    return ExitCode.OK


def _print_lint(report: object) -> None:
    from sagellm.patchkit.lint import LintReport

    assert isinstance(report, LintReport)
    for issue in report.issues:
        (_err if issue.severity == "error" else _out)(str(issue))
    _out(report.summary())


def _cmd_lint(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.lint import lint_series
    from sagellm.patchkit.upstream import read_upstream

    pin = read_upstream(layout.upstream_file)
    report = lint_series(layout.series_dir, pin.package, layout.repo_root)
    _print_lint(report)
    return ExitCode.OK if report.ok else ExitCode.FAILED


def _cmd_check(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.ops import check

    result = check(layout, _out, roundtrip=not args.no_roundtrip)
    if not result.tree_present:
        _err(f"drift: {result.tree} does not exist; run scripts/apply_patches.sh")
    elif not result.drift.clean:
        _err(f"drift: {result.drift.count} files in {result.tree} differ from pristine + series:")
        for line in result.drift.lines("  "):
            _err(line)
        _err(
            "Turn a hand edit into a patch (workspace -> commit -> export), or run scripts/apply_patches.sh to discard it."
        )
    else:
        _out(f"tree ok: {result.tree} equals pristine + series")
    _print_lint(result.lint)
    if result.roundtrip:
        _err(
            f"round trip: {len(result.roundtrip)} patches differ from their re-export (run workspace + export to normalize):"
        )
        for difference in result.roundtrip:
            _err(f"  {difference.name}")
            for line in difference.diff.splitlines():
                _err(f"    {line}")
    elif result.roundtrip is not None:
        _out("round trip ok: workspace -> export reproduces every patch byte for byte")
    _out("check passed" if result.ok else "check FAILED")
    return ExitCode.OK if result.ok else ExitCode.FAILED


def _cmd_workspace(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.workspace import create_workspace

    workspace = create_workspace(layout, args.dir, _out)
    _out(f"edit with git in {workspace.path} (amend, rebase -i, new commits), then: {PROG} export {workspace.path}")
    return ExitCode.OK


def _cmd_export(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.lint import lint_series
    from sagellm.patchkit.upstream import read_upstream
    from sagellm.patchkit.workspace import export_series

    folder = args.to or layout.series_dir
    result = export_series(args.dir, folder, args.base, None, _out)
    for name in result.changed:
        _out(f"  wrote   {name}")
    for name in result.removed:
        _out(f"  removed {name}")
    report = lint_series(folder, read_upstream(layout.upstream_file).package, layout.repo_root)
    _print_lint(report)
    return ExitCode.OK if report.ok else ExitCode.FAILED


def _cmd_rebase(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.rebase import rebase

    _out(f"rebasing the series onto {args.version}")
    result = rebase(layout, args.version, args.out, _out, keep_work=args.keep_work)
    _out(
        f"rebased series ({len(result.carried)}/{len(result.outcomes)} patches) written to {result.out_dir}; "
        "pinned series untouched"
    )
    if result.conflicts:
        _err(f"conflicts: {', '.join(result.conflicts)} (see {result.out_dir / 'REPORT.md'})")
        return ExitCode.FAILED
    return ExitCode.OK


def _cmd_compat(layout: Layout, args: argparse.Namespace) -> int:
    from sagellm.patchkit.compat import DEFAULT_RELEASES, run_compat

    versions = tuple(args.versions) or DEFAULT_RELEASES
    command = " ".join([PROG, "compat", *map(shlex.quote, args.versions)])
    report = run_compat(layout, versions, command, args.output, _out)
    if report.failed_fetches:
        _err(f"could not fetch: {', '.join(report.failed_fetches)}")
        return ExitCode.FETCH_FAILED
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Layout, argparse.Namespace], int]] = {
    "apply": _cmd_apply,
    "check": _cmd_check,
    "reverse": _cmd_reverse,
    "clean": _cmd_clean,
    "lint": _cmd_lint,
    "workspace": _cmd_workspace,
    "export": _cmd_export,
    "rebase": _cmd_rebase,
    "compat": _cmd_compat,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = args.command or "apply"
    try:
        layout = layout_from_args(args)
        return int(COMMANDS[name](layout, args))
    except PatchkitError as error:
        _err(f"error: {error}")
        return int(error.exit_code)
    except ValueError as error:  # invalid environment values (e.g. SAGELLM_KEEP_TURBOMIND)
        _err(f"error: {error}")
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
