"""`sage llm`: Start, list and stop LLM engines."""

from __future__ import annotations

import typer

app = typer.Typer(help="Start, list and stop LLM engines.", no_args_is_help=True)
