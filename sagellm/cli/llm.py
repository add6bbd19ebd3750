"""`sage llm`: start, list and stop LLM engines."""

from __future__ import annotations

import atexit
import os
import time
from typing import Optional

import typer

app = typer.Typer(help="Start, list and stop LLM engines.", no_args_is_help=True)
engine_app = typer.Typer(help="Engines on this machine.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")

ENGINE_KINDS = ("sagellm",)


@engine_app.command("start")
def start(
    model: Optional[str] = typer.Argument(
        None, help="HF checkpoint directory (safetensors). Default: the embedded tiny model, created on first use."
    ),
    engine_kind: str = typer.Option("sagellm", help=f"Engine to start: {', '.join(ENGINE_KINDS)}."),
    device: str = typer.Option(
        os.environ.get("SAGELLM_DEVICE", "auto"),
        help="auto|cpu|cuda|ascend|camb|maca. auto picks the first usable accelerator, else cpu.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Only loopback by default."),
    port: int = typer.Option(0, help="Port to bind; 0 picks a free one (printed on start)."),
    dtype: str = typer.Option("auto", help="auto|float32|bfloat16|float16. auto keeps float32 checkpoints in float32 on cpu."),
    session_len: Optional[int] = typer.Option(None, help="Max tokens per session (prompt + output). Default: the model's."),
    max_batch_size: Optional[int] = typer.Option(None, help="Max sequences per engine step."),
    cache_max_entry_count: Optional[float] = typer.Option(
        None, help="Fraction of free device memory (available RAM on cpu; cap with SAGELLM_CPU_MEMORY_GIB) for the KV cache."
    ),
    block_size: int = typer.Option(64, help="Tokens per KV block (power of two >= 16)."),
    prefix_caching: bool = typer.Option(True, help="Reuse KV of shared prompt prefixes."),
    model_name: Optional[str] = typer.Option(None, help="Name clients pass as `model`. Default: the model path."),
    api_keys: Optional[str] = typer.Option(
        os.environ.get("SAGELLM_API_KEYS"), help="Comma-separated bearer tokens required on every endpoint but /health."
    ),
    sample: bool = typer.Option(True, help="Send one sample chat request once ready and print it."),
) -> None:
    """Start an OpenAI-compatible engine server (blocks until interrupted)."""
    if engine_kind not in ENGINE_KINDS:
        raise typer.BadParameter(f"unknown engine kind {engine_kind!r}; valid: {', '.join(ENGINE_KINDS)}")
    from sagellm.control_plane import local_engines
    from sagellm.control_plane.ports import SagePorts
    from sagellm.engines.lmdeploy.server import EngineServerConfig, serve
    from sagellm.hal import resolve_device

    descriptor = resolve_device(device)
    if model is None:
        from sagellm.models.tiny import ensure_default_model

        model = str(ensure_default_model())
        typer.echo(f"[sagellm] using the embedded default model at {model}")
    port = SagePorts.resolve(port, host)
    config = EngineServerConfig(
        model=model,
        device=device,
        host=host,
        port=port,
        dtype=dtype,
        session_len=session_len,
        max_batch_size=max_batch_size,
        cache_max_entry_count=cache_max_entry_count,
        block_size=block_size,
        enable_prefix_caching=prefix_caching,
        model_name=model_name,
        api_keys=[key for key in (api_keys or "").split(",") if key],
        sample_request=sample,
    )
    entry = local_engines.LocalEngineRecord(
        pid=os.getpid(),
        engine_kind=engine_kind,
        model=model_name or model,
        device=descriptor.lmdeploy_device_type,
        base_url=f"http://{host}:{port}",
        started_at=time.time(),
    )
    local_engines.record(entry)
    atexit.register(local_engines.forget, entry.pid)
    serve(config, descriptor.lmdeploy_device_type)


@engine_app.command("list")
def list_engines() -> None:
    """List engines started on this machine that are still running."""
    from sagellm.control_plane import local_engines

    entries = local_engines.running()
    if not entries:
        typer.echo("no engines running")
        return
    typer.echo(f"{'ENGINE':<20} {'DEVICE':<8} {'URL':<28} MODEL")
    for entry in entries:
        typer.echo(f"{entry.engine_id:<20} {entry.device:<8} {entry.base_url:<28} {entry.model}")


@engine_app.command("stop")
def stop_engine(engine: str = typer.Argument(..., help="Engine id from `sage llm engine list` (kind-pid) or pid.")) -> None:
    """Stop a running engine (SIGTERM, then SIGKILL after 30 s)."""
    from sagellm.control_plane import local_engines

    try:
        entry = local_engines.stop(engine)
    except LookupError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"stopped {entry.engine_id}")
