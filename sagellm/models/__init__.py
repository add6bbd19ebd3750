"""Embedded models: a synthetic corpus, a locally trained BPE tokenizer, random-weight checkpoints.

Importing this package is cheap (no torch/transformers); they are imported when a model is built.
"""

from sagellm.models.tiny import (
    PRESETS,
    TinyModelMismatchError,
    TinyModelSpec,
    create_tiny_model,
    default_model_path,
    ensure_default_model,
    preset_spec,
    read_manifest,
    verify_tiny_model,
)

__all__ = [
    "PRESETS",
    "TinyModelMismatchError",
    "TinyModelSpec",
    "create_tiny_model",
    "default_model_path",
    "ensure_default_model",
    "preset_spec",
    "read_manifest",
    "verify_tiny_model",
]
