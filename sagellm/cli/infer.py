"""`sage infer`: Inspect inference backends and devices."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect inference backends and devices.", no_args_is_help=True)
