"""`sage patches`: Maintain the LMDeploy patch series (apply, check, export, lint, rebase)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Maintain the LMDeploy patch series (apply, check, export, lint, rebase).", no_args_is_help=True)
