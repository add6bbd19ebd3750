"""`sage models`: Create and inspect local model checkpoints."""

from __future__ import annotations

import typer

app = typer.Typer(help="Create and inspect local model checkpoints.", no_args_is_help=True)
