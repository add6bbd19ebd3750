"""`sage quantize`: write a weight-quantized copy of a float checkpoint (sagellm.accel.quantization.checkpoint)."""

from __future__ import annotations

from pathlib import Path

import typer

FORMAT_HELP = (
    "awq-w4 (AWQ 4-bit, group-wise; torch's int4 CPU GEMM on the cpu device; LMDeploy runs it in float16) | "
    "awq-w8 (AWQ 8-bit, group-wise; dequantized per call on the cpu device: slow) | "
    "w8 (LMDeploy's SmoothQuant int8 layout, per-channel; weight-only int8 on the cpu device)"
)


def quantize(
    src: Path = typer.Argument(..., help="Float Hugging Face checkpoint directory (safetensors)."),
    dst: Path = typer.Argument(..., help="Directory to write the quantized checkpoint into."),
    format: str = typer.Option(..., "--format", help=FORMAT_HELP),
    group_size: int = typer.Option(128, "--group-size", help="Input elements per scale (awq-* only; power of two)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty DST."),
) -> None:
    """Quantize the decoder-layer linear weights of SRC into a checkpoint LMDeploy loads (round to nearest, no calibration data).

    Prints the destination, then what was quantized and the size change.
    """
    from sagellm.accel.quantization.checkpoint import quantize_checkpoint
    from sagellm.core.registry import UnknownNameError

    try:
        report = quantize_checkpoint(src, dst, format, group_size, overwrite=overwrite)
    except (UnknownNameError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    worst = max(report.layers, key=lambda layer: layer.max_rel_error)
    typer.echo(report.destination)
    typer.echo(
        f"{report.format}"
        + (f" (group {report.group_size})" if report.group_size else "")
        + f": {report.quantized_tensors} linear weights quantized, {report.kept_tensors} tensors kept; "
        f"weights {report.source_weight_bytes / 2**20:.1f} MiB -> {report.weight_bytes / 2**20:.1f} MiB "
        f"({report.compression:.2f}x); worst layer error {worst.max_rel_error:.2%} of its max |w| ({worst.name})"
    )
