"""Embedded random-weight checkpoints: the default model sagellm serves and tests against.

:func:`create_tiny_model` writes a standard Hugging Face checkpoint that both
``transformers`` and LMDeploy's PyTorch engine load with their own Llama/Qwen2 code::

    <path>/
      config.json             LlamaForCausalLM or Qwen2ForCausalLM, float32, standard fields only
      generation_config.json  bos/eos/pad ids, greedy-safe (no sampling defaults)
      model.safetensors       weights drawn from ``spec.seed`` (same spec → same bytes)
      tokenizer.json, tokenizer_config.json, special_tokens_map.json   (sagellm.models.tokenizer)
      sagellm_tiny.json       the spec, its hash, per-file sha256 and a content hash

Everything is a function of the :class:`TinyModelSpec` (and of the installed torch /
transformers / tokenizers, whose random streams are stable across the versions we pin).

The weights are random (normal init, ``initializer_range``), so text is gibberish, but greedy
decoding is far from degenerate: different prompts give different, varied continuations, which
is what a token-for-token oracle needs. The lm_head rows of the special tokens are zero (when
embeddings are untied), so greedy decoding never emits bos/eos/pad/ChatML markers and a
generation runs to its token limit unless a stop word is given.

Writes are atomic: files go to a sibling temporary directory that is renamed into place, so an
interrupted run never leaves a half model at ``path``. A second call with the same spec returns
the existing directory; a different spec raises :class:`TinyModelMismatchError` unless
``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagellm.core.paths import cache_root
from sagellm.models.corpus import CORPUS_VERSION
from sagellm.models.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS

__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "MANIFEST_NAME",
    "PRESETS",
    "PRESET_ALIASES",
    "TinyModelMismatchError",
    "TinyModelSpec",
    "cache_root",
    "create_tiny_model",
    "default_model_path",
    "ensure_default_model",
    "preset_spec",
    "read_manifest",
    "verify_tiny_model",
]

# Bump when the bytes written for a given spec change (weights recipe, file layout, corpus).
FORMAT_VERSION = 1
MANIFEST_NAME = "sagellm_tiny.json"
WEIGHTS_NAME = "model.safetensors"

# architecture name -> (transformers config class, architectures[0] in config.json)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}
DTYPES = ("float32", "bfloat16", "float16")

ProgressFn = Callable[[str], None]


class TinyModelMismatchError(FileExistsError):
    """The target directory holds something other than the requested model."""


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and seeds of an embedded model. Every field is validated on construction.

    Attributes:
        architecture: ``"llama"`` or ``"qwen2"`` (Qwen2 adds q/k/v biases).
        hidden_size: model width; must be divisible by ``num_heads``.
        num_layers: decoder layers.
        num_heads: attention heads; head_dim = hidden_size // num_heads, must be even (RoPE).
        num_kv_heads: key/value heads (GQA); must divide ``num_heads``.
        intermediate_size: SwiGLU MLP width.
        vocab_size: tokenizer and embedding size (the tokenizer is trained to exactly this).
        max_position_embeddings: longest sequence the config advertises.
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        tie_word_embeddings: share the embedding and lm_head matrices.
        initializer_range: std of the normal weight init. transformers' usual 0.02 leaves the
            residual stream dominated by the current token's embedding, so greedy decoding falls
            into 1-3 token loops; 0.1 (0.05 for the 12-layer preset) gives varied continuations.
        seed: weights seed.
        tokenizer_seed: corpus seed the tokenizer is trained on (kept apart from ``seed`` so
            models that differ only in weights share a tokenizer).
        dtype: stored weight dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
    """

    architecture: str = "llama"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    vocab_size: int = 4096
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.1
    seed: int = 0
    tokenizer_seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("seed", "tokenizer_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = hidden_size // num_heads = {self.head_dim} must be even for RoPE")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {self.vocab_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")

    # ---- derived -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_parameters(self) -> int:
        """Parameter count of the checkpoint this spec produces (computed, nothing built)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attention = h * q + 2 * h * kv + q * h
        if self.architecture == "qwen2":
            attention += q + 2 * kv  # q/k/v biases
        per_layer = attention + 3 * h * self.intermediate_size + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + h

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TinyModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TinyModelSpec fields: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TinyModelSpec:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def spec_hash(self) -> str:
        """12 hex digits identifying what :func:`create_tiny_model` writes for this spec."""
        payload = {"format": FORMAT_VERSION, "corpus": CORPUS_VERSION, "spec": self.to_dict()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def to_hf_config(self):
        """The ``transformers`` config (``LlamaConfig`` / ``Qwen2Config``) for this spec."""
        import transformers

        config_class, architecture = ARCHITECTURES[self.architecture]
        s = SPECIAL_TOKENS
        bos, eos, pad = (_special_id(t) for t in (s.bos, s.eos, s.pad))
        kwargs: dict[str, Any] = dict(
            architectures=[architecture],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=float(self.rope_theta),
            rope_scaling=None,
            attention_dropout=0.0,
            tie_word_embeddings=self.tie_word_embeddings,
            use_cache=True,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            dtype=self.dtype,
        )
        if self.architecture == "qwen2":
            kwargs.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        else:
            kwargs.update(attention_bias=False, mlp_bias=False)
        return getattr(transformers, config_class)(**kwargs)


# name -> spec. `tiny` is the default model; `small-100m` (~102M parameters) is for benchmarks.
PRESETS: dict[str, TinyModelSpec] = {
    "tiny": TinyModelSpec(),
    "small-100m": TinyModelSpec(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        intermediate_size=2560,
        vocab_size=8192,
        initializer_range=0.05,  # keeps 12 layers' residual stream in the tens, not hundreds
    ),
}
PRESET_ALIASES: dict[str, str] = {"100m": "small-100m", "default": "tiny"}


def preset_spec(name: str, **overrides: Any) -> TinyModelSpec:
    """The preset ``name`` (``tiny``, ``small-100m``; alias ``100m``) with ``overrides`` applied.

    ``None`` values in ``overrides`` are ignored (flags that were not given).
    """
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        valid = sorted([*PRESETS, *PRESET_ALIASES])
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(valid)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return PRESETS[key].replace(**changes) if changes else PRESETS[key]


def _special_id(token: str) -> int:
    return SPECIAL_TOKENS.in_id_order().index(token)


# ---- default model ---------------------------------------------------------------------------
def default_model_path(spec: TinyModelSpec | None = None) -> Path:
    """Where the default model lives: ``<cache>/models/tiny-<arch>-v<format>-<spechash>``.

    The ``v<format>`` part keeps the name clear of LMDeploy's chat-template name matching
    (a bare hash starting with ``2`` would read as ``llama-2``).
    """
    spec = spec or PRESETS["tiny"]
    return cache_root() / "models" / f"tiny-{spec.architecture}-v{FORMAT_VERSION}-{spec.spec_hash()}"


def ensure_default_model(spec: TinyModelSpec | None = None, *, progress: ProgressFn | None = None) -> Path:
    """Create the default model on first use and return its path (cheap when it exists)."""
    return create_tiny_model(default_model_path(spec), spec or PRESETS["tiny"], progress=progress)


# ---- create / verify -------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The parsed ``sagellm_tiny.json`` of ``path``, or ``None`` when there is none or it is unreadable."""
    try:
        return json.loads((Path(path) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def verify_tiny_model(path: str | Path) -> bool:
    """True when every file listed in the manifest is present with the recorded sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    if not manifest or "files" not in manifest:
        return False
    try:
        return _file_hashes(path, list(manifest["files"])) == manifest["files"]
    except OSError:
        return False


def create_tiny_model(
    path: str | Path,
    spec: TinyModelSpec | None = None,
    overwrite: bool = False,
    *,
    progress: ProgressFn | None = None,
) -> Path:
    """Write the checkpoint for ``spec`` (default: the ``tiny`` preset) at ``path``.

    Args:
        path: target directory; its parent is created if missing.
        spec: what to build.
        overwrite: rebuild and replace whatever is at ``path`` (also this spec's model, which
            repairs a damaged copy).
        progress: called with one line per stage (tokenizer, weights, ...); silent when None.

    Returns:
        ``path`` as an absolute :class:`Path`.

    Raises:
        TinyModelMismatchError: ``path`` exists, is not empty and holds another model (or
            something that is not an embedded model) and ``overwrite`` is False.
    """
    spec = spec or PRESETS["tiny"]
    path = Path(path).expanduser().absolute()
    say = progress or (lambda _line: None)

    if _matches(path, spec) and not overwrite:
        say(f"exists: {path}")
        return path
    if _occupied(path) and not overwrite:
        raise TinyModelMismatchError(_mismatch_message(path, spec))

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write_checkpoint(staging, spec, say)
        _install(staging, path, spec, replace=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"done: {path}")
    return path


def _matches(path: Path, spec: TinyModelSpec) -> bool:
    manifest = read_manifest(path)
    return bool(manifest) and manifest.get("spec_hash") == spec.spec_hash() and (path / WEIGHTS_NAME).is_file()


def _occupied(path: Path) -> bool:
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


def _mismatch_message(path: Path, spec: TinyModelSpec) -> str:
    manifest = read_manifest(path)
    if not manifest or "spec" not in manifest:
        return (f"{path} exists and is not an embedded sagellm model (no readable {MANIFEST_NAME}); "
                "choose another path or pass overwrite=True (--overwrite)")
    old = manifest["spec"]
    new = spec.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    detail = "; ".join(diffs) if diffs else f"format {manifest.get('format')!r} -> {FORMAT_VERSION}"
    return (f"{path} holds an embedded model with a different spec ({detail}); "
            "choose another path or pass overwrite=True (--overwrite)")


def _install(staging: Path, path: Path, spec: TinyModelSpec, *, replace: bool) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` is moved aside first when ``replace``."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    trash = None
    if replace and (path.exists() or path.is_symlink()):
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, trash / "old")
    try:
        os.rename(staging, path)
    except OSError:
        # Lost a race with another process creating the same model: keep theirs if it is ours.
        if _matches(path, spec):
            return
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _write_checkpoint(out: Path, spec: TinyModelSpec, say: ProgressFn) -> None:
    import tokenizers
    import torch
    import transformers

    from sagellm.models.tokenizer import build_tokenizer, save_tokenizer

    say(f"[1/3] training byte-level BPE tokenizer (vocab {spec.vocab_size}, seed {spec.tokenizer_seed})")
    tokenizer = build_tokenizer(spec.vocab_size, spec.tokenizer_seed, model_max_length=spec.max_position_embeddings)
    save_tokenizer(tokenizer, out)

    say(f"[2/3] initializing {spec.architecture} weights ({spec.num_parameters():,} parameters, seed {spec.seed})")
    config = spec.to_hf_config()
    state = _init_weights(config, spec)
    num_params = sum(t.numel() for t in state.values())
    from safetensors.torch import save_file

    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})

    say("[3/3] writing config.json, generation_config.json, manifest")
    config_dict = config.to_diff_dict()
    config_dict["torch_dtype"] = spec.dtype  # LMDeploy 0.11 and older readers look for this key
    _write_json(out / "config.json", config_dict)
    s = SPECIAL_TOKENS
    _write_json(out / "generation_config.json", {
        "bos_token_id": _special_id(s.bos),
        "eos_token_id": [_special_id(s.eos), _special_id(s.im_end)],
        "pad_token_id": _special_id(s.pad),
        "do_sample": False,
        "transformers_version": transformers.__version__,
    })
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    hashes = _file_hashes(out, files)
    content = hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in hashes.items()).encode()).hexdigest()
    _write_json(out / MANIFEST_NAME, {
        "format": FORMAT_VERSION,
        "corpus_version": CORPUS_VERSION,
        "spec": spec.to_dict(),
        "spec_hash": spec.spec_hash(),
        "num_parameters": num_params,
        "content_sha256": content,
        "files": hashes,
        "created_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    })
    _publish_permissions(out)


def _init_weights(config, spec: TinyModelSpec) -> dict:
    """Seeded init through transformers' own ``_init_weights``; returns contiguous CPU tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        if not spec.tie_word_embeddings:
            # A trained model never predicts these; zero logits keep greedy decoding off them.
            model.lm_head.weight[: len(SPECIAL_TOKENS.in_id_order())].zero_()
    dtype = getattr(torch, spec.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if spec.tie_word_embeddings and name == "lm_head.weight":
            continue
        state[name] = tensor.detach().to(dtype).contiguous().clone()
    return state


def _publish_permissions(root: Path) -> None:
    """mkdtemp makes the directory 0700 and some writers make files 0600: apply the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for file in root.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def _file_hashes(root: Path, names: list[str]) -> dict[str, str]:
    result = {}
    for name in sorted(names):
        digest = hashlib.sha256()
        with open(root / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        result[name] = digest.hexdigest()
    return result


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
