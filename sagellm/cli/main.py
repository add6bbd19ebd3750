"""The `sage` command: one typer app with a sub-app per command group."""

from __future__ import annotations

import importlib

import typer

# group name -> module exposing `app: typer.Typer`. Imported on start so that
# `sage --help` lists every group; each module keeps heavy imports inside its commands.
COMMAND_GROUPS: dict[str, str] = {
    "llm": "sagellm.cli.llm",
    "infer": "sagellm.cli.infer",
    "models": "sagellm.cli.models",
    "patches": "sagellm.cli.patches",
    "gateway": "sagellm.cli.gateway",
    "transport": "sagellm.cli.transport",
    "bench": "sagellm.cli.bench",
}

app = typer.Typer(
    name="sage",
    help="sagellm: LLM inference over a patched LMDeploy PyTorch engine (CPU and domestic accelerators first-class).",
    no_args_is_help=True,
    add_completion=False,
)

for _name, _module in COMMAND_GROUPS.items():
    app.add_typer(importlib.import_module(_module).app, name=_name)

# single top-level commands: name -> "module:function" (the function keeps heavy imports inside)
COMMANDS: dict[str, str] = {
    "quantize": "sagellm.cli.quantize:quantize",
}

for _name, _target in COMMANDS.items():
    _module, _, _attr = _target.partition(":")
    app.command(_name)(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
