"""`sage infer`: Inspect inference backends and devices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sagellm.hal.types import AcceleratorDescriptor

app = typer.Typer(help="Inspect inference backends and devices.", no_args_is_help=True)
backends_app = typer.Typer(help="Accelerator platforms and how LMDeploy runs on them.", no_args_is_help=True)
app.add_typer(backends_app, name="backends")

COLUMNS = ("name", "usable", "devices", "memory", "dtypes", "device_type", "collective", "reason")


@backends_app.command("list")
def list_backends(
    as_json: bool = typer.Option(False, "--json", help="Print the descriptors as JSON."),
) -> None:
    """List every known platform: usable or not, devices, memory, dtypes, LMDeploy device_type."""
    from sagellm.hal import detect_platforms

    descriptors = detect_platforms()
    if as_json:
        typer.echo(json.dumps([d.to_dict() for d in descriptors], indent=2))
        return
    typer.echo(format_table(descriptors))


def format_table(descriptors: Sequence[AcceleratorDescriptor]) -> str:
    """A plain-text table, one row per platform (the reason column is never truncated)."""
    rows = [COLUMNS] + [_row(d) for d in descriptors]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row(d: AcceleratorDescriptor) -> tuple[str, ...]:
    return (
        d.platform,
        "yes" if d.usable else "no",
        str(d.device_count),
        _memory(d.device_memory_bytes),
        ",".join(d.dtypes) or "-",
        d.lmdeploy_device_type or "-",
        d.collective_backend or "-",
        d.reason or "",
    )


def _memory(per_device: Sequence[int]) -> str:
    if not per_device:
        return "-"
    sizes = [_gib(b) for b in per_device]
    if len(set(sizes)) == 1:
        return sizes[0] if len(sizes) == 1 else f"{len(sizes)}x{sizes[0]}"
    return ",".join(sizes)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f}GiB"
