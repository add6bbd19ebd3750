"""`sage llm`: start, list and stop LLM engines."""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path
from typing import Optional

import typer

from sagellm.control_plane.engine_config import EngineStartConfig
from sagellm.core.config import ConfigError, load_config, with_config_options
from sagellm.core.quant import check_kv_dtype_on_device

app = typer.Typer(help="Start, list and stop LLM engines.", no_args_is_help=True)
engine_app = typer.Typer(help="Engines on this machine.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


@engine_app.command("start")
@with_config_options(EngineStartConfig, typer.Option)
def start(
    model: Optional[str] = typer.Argument(
        None, help="HF checkpoint directory (safetensors). Default: the embedded tiny model, created on first use."
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="YAML file of options (see configs/engines/sagellm.yaml). Precedence: file < SAGELLM_* env < flags.",
    ),
    config_overrides: Optional[dict] = None,
) -> None:
    """Start an OpenAI-compatible engine server (blocks until interrupted)."""
    overrides = dict(config_overrides or {})
    if model is not None:
        overrides["model"] = model
    try:
        options = load_config(EngineStartConfig, file=config, overrides=overrides)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if options.draft_model is not None and options.model is not None:
        from sagellm.engines.lmdeploy.spec_decode import check_pair

        try:  # the draft/target pair, before anything is started or exported
            check_pair(options.spec_decode_profile(), options.model)
        except ValueError as err:
            typer.echo(f"error: --draft-model {options.draft_model}: {err}", err=True)
            raise typer.Exit(2) from None
    from sagellm.hal import resolve_device

    descriptor = resolve_device(options.device)
    try:  # with --device auto, whether fp8 KV can run is known only now that the device is
        check_kv_dtype_on_device("EngineStartConfig", options.kv_dtype,
                                 descriptor.lmdeploy_device_type or descriptor.platform)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    # Before anything imports prometheus_client: metrics of the engine process reach /metrics.
    from sagellm.telemetry.multiproc import prepare_multiprocess_dir

    prepare_multiprocess_dir()
    from sagellm.control_plane import local_engines
    from sagellm.control_plane.ports import SagePorts
    from sagellm.engines.lmdeploy.server import EngineServerConfig, serve
    model = options.model
    if model is None:
        from sagellm.models.tiny import ensure_default_model

        model = str(ensure_default_model())
        typer.echo(f"[sagellm] using the embedded default model at {model}")
    port = SagePorts.resolve(options.port, options.host)
    server_config = EngineServerConfig(
        model=model,
        device=options.device,
        host=options.host,
        port=port,
        dtype=options.dtype,
        kv_dtype=options.kv_dtype,
        session_len=options.session_len,
        max_batch_size=options.max_batch_size,
        cache_max_entry_count=options.cache_max_entry_count,
        block_size=options.block_size,
        enable_prefix_caching=options.prefix_caching,
        model_name=options.model_name,
        api_keys=list(options.api_keys),
        log_level=options.log_level,
        sample_request=options.sample,
        kv_transport=options.kv_transport_config(),
        kv_tiers=options.kv_tier_config(),
        pd=options.pd_config(),
        scheduler=options.scheduler_config(),
        spec_decode=options.spec_decode_profile(),
    )
    entry = local_engines.LocalEngineRecord(
        pid=os.getpid(),
        engine_kind=options.engine_kind,
        model=options.model_name or model,
        device=descriptor.lmdeploy_device_type,
        base_url=f"http://{options.host}:{port}",
        started_at=time.time(),
    )
    local_engines.record(entry)
    atexit.register(local_engines.forget, entry.pid)
    serve(server_config, descriptor.lmdeploy_device_type)


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
