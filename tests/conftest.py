"""Shared fixtures: locally generated tiny checkpoints (no hub access), cached per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub; transformers and huggingface_hub must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _accelerator_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _accelerator_present():
        return
    skip = pytest.mark.skip(reason="needs an accelerator (none present)")
    for item in items:
        if "accelerator" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Returns a function arch -> path of a float32 tiny checkpoint (created once per session)."""
    from sagellm.models.tiny import TinyModelSpec, create_tiny_model

    root = Path(os.environ.get("SAGELLM_TEST_MODELS") or tmp_path_factory.mktemp("models"))
    made: dict[str, Path] = {}

    def make(arch: str = "llama") -> Path:
        if arch not in made:
            made[arch] = create_tiny_model(root / f"tiny-{arch}", TinyModelSpec(architecture=arch))
        return made[arch]

    return make
