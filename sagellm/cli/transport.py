"""`sage transport`: probe the host's topology and inspect KV transport presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="KV transport: topology probe and presets.", no_args_is_help=True)


@app.command("probe")
def probe_command(
    as_json: bool = typer.Option(False, "--json", help="Print the HardwareProfile as JSON."),
    output: Optional[Path] = typer.Option(None, help="Also write the JSON profile to this file."),
    measure: bool = typer.Option(True, help="Measure host memcpy bandwidth (a few seconds at most)."),
    buffer_mib: int = typer.Option(64, min=1, max=4096, help="Size of the buffer copied, MiB."),
    repetitions: int = typer.Option(5, min=1, max=100, help="Timed copies (stops early after the time budget)."),
) -> None:
    """Measure devices, links, NUMA nodes and memory bandwidth; recommend a preset."""
    from sagellm.comm_backend.topology import probe

    profile = probe(measure=measure, buffer_bytes=buffer_mib << 20, repetitions=repetitions)
    text = profile.to_json(indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    typer.echo(text if as_json else profile.summary())


@app.command("presets")
def presets_command(
    as_json: bool = typer.Option(False, "--json", help="Print the presets as JSON."),
) -> None:
    """List the KV transport presets (configs/kv_transport_presets.yaml)."""
    from sagellm.comm_backend.transport_config import load_presets, presets_path

    registry = load_presets()
    presets = [registry.get(name) for name in registry.names()]
    if as_json:
        typer.echo(json.dumps({p.name: p.config.to_dict() for p in presets}, indent=2))
        return
    typer.echo(f"presets from {presets_path()}:")
    for preset in presets:
        typer.echo(f"  {preset.name:<12} {preset.config.describe()}")
        typer.echo(f"  {'':<12} {preset.description}")


@app.command("show")
def show_command(
    spec: str = typer.Argument(..., help="A --kv-transport value: preset=NAME[,field=value...] or field=value,..."),
) -> None:
    """Validate a --kv-transport value and print the resulting config as JSON."""
    from sagellm.comm_backend.transport_config import parse_kv_transport

    try:
        config = parse_kv_transport(spec)
    except ValueError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    typer.echo(config.to_json(indent=2))


@app.command("backends")
def backends_command(
    as_json: bool = typer.Option(False, "--json", help="Print {backend: null if usable, else why not} as JSON."),
) -> None:
    """List the transport backends and whether each can run here (Mooncake/DLSlime need their packages)."""
    from sagellm.comm_backend.engine import backend_status

    status = backend_status()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    for name, reason in status.items():
        typer.echo(f"  {name:<11} {'usable' if reason is None else 'unavailable: ' + reason}")
