"""`sage models`: Create and inspect local model checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from sagellm.models.tiny import TinyModelSpec

app = typer.Typer(help="Create and inspect local model checkpoints.", no_args_is_help=True)

ARCH_CHOICES = "llama|qwen2"
PRESET_CHOICES = "tiny|small-100m (alias 100m)"


@app.command("create-tiny")
def create_tiny(
    path: Path = typer.Argument(..., help="Directory to write the checkpoint into (created; parents too)."),
    preset: str = typer.Option("tiny", help=f"Starting shape: {PRESET_CHOICES}. Flags below override its fields."),
    arch: Optional[str] = typer.Option(None, help=f"Architecture: {ARCH_CHOICES}. Default: the preset's (llama)."),
    hidden: Optional[int] = typer.Option(None, help="hidden_size (must be divisible by --heads)."),
    layers: Optional[int] = typer.Option(None, help="Number of decoder layers."),
    heads: Optional[int] = typer.Option(None, help="Attention heads."),
    kv_heads: Optional[int] = typer.Option(None, help="Key/value heads (must divide --heads)."),
    intermediate: Optional[int] = typer.Option(None, help="MLP intermediate_size."),
    vocab: Optional[int] = typer.Option(None, help="Vocabulary size; the BPE tokenizer is trained to exactly this."),
    max_positions: Optional[int] = typer.Option(None, help="max_position_embeddings."),
    seed: Optional[int] = typer.Option(None, help="Weights seed (same spec and seed give identical files)."),
    tokenizer_seed: Optional[int] = typer.Option(None, help="Seed of the corpus the tokenizer is trained on."),
    dtype: Optional[str] = typer.Option(None, help="Stored weight dtype: float32|bfloat16|float16. Default float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, different model at PATH."),
) -> None:
    """Write a random-weight Llama/Qwen2 checkpoint with a locally trained tokenizer.

    The result loads with transformers (AutoModelForCausalLM / AutoTokenizer) and LMDeploy's PyTorch engine. Re-running with the same options is a no-op. Prints the path, then the parameter count.
    """
    from sagellm.models.tiny import TinyModelMismatchError, create_tiny_model, preset_spec

    try:
        spec = preset_spec(
            preset,
            architecture=arch,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            intermediate_size=intermediate,
            vocab_size=vocab,
            max_position_embeddings=max_positions,
            seed=seed,
            tokenizer_seed=tokenizer_seed,
            dtype=dtype,
        )
        out = create_tiny_model(path, spec, overwrite=overwrite, progress=_progress)
    except TinyModelMismatchError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(out))
    typer.echo(_summary(spec))


@app.command("default")
def default(
    arch: str = typer.Option("llama", help=f"Architecture of the default model: {ARCH_CHOICES}."),
) -> None:
    """Print the path of the embedded default model, creating it on first use.

    The path is ${SAGELLM_CACHE_DIR:-~/.cache/sagellm}/models/tiny-<arch>-v<format>-<spechash>. Only the path goes to stdout (progress goes to stderr), so `$(sage models default)` works.
    """
    from sagellm.models.tiny import ensure_default_model, preset_spec

    try:
        spec = preset_spec("tiny", architecture=arch)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(ensure_default_model(spec, progress=_progress)))


def _progress(line: str) -> None:
    typer.echo(f"[sage models] {line}", err=True)


def _summary(spec: TinyModelSpec) -> str:
    return (
        f"{spec.num_parameters():,} parameters ({spec.architecture}, hidden {spec.hidden_size}, "
        f"{spec.num_layers} layers, {spec.num_heads}/{spec.num_kv_heads} heads, vocab {spec.vocab_size}, {spec.dtype})"
    )
