"""`sage gateway`: one OpenAI-compatible endpoint in front of several engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from sagellm.control_plane.serve import ENV_PREFIX, GatewayConfig
from sagellm.core.config import ConfigError, with_config_options

app = typer.Typer(help="The control-plane gateway: routing across engines.", no_args_is_help=True)


@app.command("start")
@with_config_options(GatewayConfig, typer.Option, env_prefix=ENV_PREFIX)
def start(
    engine: Optional[List[str]] = typer.Option(
        None, "--engine", help="External engine: URL or url=URL,kind=vllm|lmdeploy|sglang|openai|sagellm,"
        "device=cuda,capacity=N,api_key=KEY,model=NAME. Repeatable."
    ),
    start_engine: Optional[List[str]] = typer.Option(
        None, "--start-engine", help="sagellm engine to start: MODEL or model=PATH,name=NAME,device=cpu,capacity=N. Repeatable."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file of gateway options. Precedence: file < SAGELLM_GATEWAY_* env < flags."
    ),
    config_overrides: Optional[dict] = None,
) -> None:
    """Start the gateway (blocks until interrupted); stops the engines it started on exit."""
    from sagellm.control_plane.serve import load_gateway_config, serve

    overrides = dict(config_overrides or {})
    if engine:
        overrides["engines"] = list(engine)
    if start_engine:
        overrides["start_engines"] = list(start_engine)
    try:
        options = load_gateway_config(config, overrides)
        serve(options)
    except (ConfigError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the raw engine list."),
    api_key: Optional[str] = typer.Option(None, help="Key for a gateway with auth (default: SAGELLM_API_KEY(S))."),
) -> None:
    """Show the running gateway's engines (found like UnifiedInferenceClient finds it)."""
    import httpx

    from sagellm.control_plane.client import UnifiedInferenceClient

    try:
        base_url = UnifiedInferenceClient.discover()
    except LookupError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None
    key = UnifiedInferenceClient.api_key(api_key)
    try:
        response = httpx.get(f"{base_url}/v1/sagellm/engines", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as err:
        typer.echo(f"gateway at {base_url}: {err}", err=True)
        raise typer.Exit(1) from None
    data = response.json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"gateway {base_url} (policy {data['policy']})")
    typer.echo(f"{'ENGINE':<24} {'STATE':<10} {'DEVICE':<8} {'LOAD':<8} {'URL':<28} MODELS")
    for e in data["engines"]:
        load = f"{e['in_flight']}/{e['capacity']}"
        typer.echo(
            f"{e['engine_id']:<24} {e['state']:<10} {e['device']:<8} {load:<8} {e['base_url']:<28} {','.join(e['models'])}"
        )
        if e["last_error"]:
            typer.echo(f"{'':<24} last error: {e['last_error']}")
