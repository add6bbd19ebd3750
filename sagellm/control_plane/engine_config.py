"""``EngineStartConfig``: every option of ``sage llm engine start``, defined once.

The CLI flags, the ``SAGELLM_*`` variables and the keys of ``configs/engines/sagellm.yaml``
all come from these fields (``sagellm.core.config``), with precedence
defaults < ``--config FILE`` < environment < flags::

    sage llm engine start --config configs/engines/sagellm.yaml --port 8000
    SAGELLM_BLOCK_SIZE=32 sage llm engine start MODEL

Invalid values fail at start with the option, the value, where it came from and what is
accepted. :func:`render_yaml` writes the documented file; a unit test keeps the committed
copy equal to it. :func:`engine_start_args` turns a config back into the command line the
control plane runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from sagellm.core.config import option_specs
from sagellm.core.quant import check_kv_dtype_on_device
from sagellm.core.serialization import encode
from sagellm.core.validation import check_choice, check_float, check_int, check_str, invalid
from sagellm.accel.spec_decode import MAX_SPECULATIVE_TOKENS
from sagellm.comm_backend.pd_config import PDConfig
from sagellm.kv_runtime.config import KVTierConfig
from sagellm.scheduler_ir.config import SchedulerConfig

ENGINE_KINDS: tuple[str, ...] = ("sagellm",)
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
#: KV dtypes the engine can run; fp8 ones only on the cpu device (QuantizationProfile.lmdeploy_quant_policy).
KV_DTYPES: tuple[str, ...] = ("auto", "int8", "int4", "fp8_e4m3", "fp8_e5m2")
LOG_LEVELS: tuple[str, ...] = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _same_as(cls: type, name: str):
    """A field with the default and help of ``cls.name``: one definition for both configs."""
    source = cls.__dataclass_fields__[name]
    return field(default=source.default, metadata=dict(source.metadata))


def device_choices() -> tuple[str, ...]:
    """``auto``, every HAL platform and its aliases."""
    from sagellm.hal import ALIASES, platform_names

    return ("auto", *platform_names(), *sorted(ALIASES))


@dataclass(frozen=True)
class EngineStartConfig:
    """Options of ``sage llm engine start`` (see the module docstring for the layering)."""

    model: Optional[str] = field(
        default=None,
        metadata={"help": "HF checkpoint directory (safetensors); the positional MODEL argument. "
                          "None: the embedded tiny model, created on first use", "cli": False},
    )
    engine_kind: Literal["sagellm"] = field(default="sagellm", metadata={"help": "engine to start"})
    device: str = field(
        default="auto",
        metadata={"help": "auto|cpu|cuda|ascend|camb|maca|kunlun (aliases npu, mlu, dcu, rocm, metax); "
                          "auto picks the first usable accelerator, else cpu"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; loopback only by default"})
    port: int = field(default=0, metadata={"help": "port to bind; 0 picks a free one (printed on start)"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "compute dtype; auto keeps float32 checkpoints in float32 on cpu"}
    )
    kv_dtype: Literal["auto", "int8", "int4", "fp8_e4m3", "fp8_e5m2"] = field(
        default="auto",
        metadata={"help": "KV-cache element type: auto keeps the model dtype; int8 / int4 quantize per token "
                          "per head (LMDeploy quant_policy 8 / 4); fp8_e4m3 / fp8_e5m2 store float8 with a "
                          "per-token-per-head scale (cpu device only)"},
    )
    session_len: Optional[int] = field(
        default=None, metadata={"help": "max tokens per session (prompt + output), >= 16; None: the model's"}
    )
    max_batch_size: Optional[int] = field(default=None, metadata={"help": "max sequences per engine step; None: LMDeploy's default"})
    cache_max_entry_count: Optional[float] = field(
        default=None,
        metadata={"help": "fraction in (0, 1) of free device memory for the KV cache (available RAM on cpu, "
                          "capped by SAGELLM_CPU_MEMORY_GIB); None: 0.1 on cpu, 0.8 elsewhere"},
    )
    block_size: int = field(default=64, metadata={"help": "tokens per KV block (a power of two >= 16)"})
    prefix_caching: bool = field(default=True, metadata={"help": "reuse the KV of shared prompt prefixes"})
    model_name: Optional[str] = field(default=None, metadata={"help": "name clients pass as `model`; None: the model path"})
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "bearer tokens required on every endpoint but /health (comma-separated); empty: no auth"}
    )
    sample: bool = field(default=True, metadata={"help": "send one sample chat request once ready and print it"})
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = field(
        default="WARNING", metadata={"help": "LMDeploy log level"}
    )
    kv_tiers: tuple[str, ...] = _same_as(KVTierConfig, "kv_tiers")
    host_cache_gib: float = _same_as(KVTierConfig, "host_cache_gib")
    ssd_cache_dir: Optional[str] = _same_as(KVTierConfig, "ssd_cache_dir")
    ssd_cache_gib: float = _same_as(KVTierConfig, "ssd_cache_gib")
    kv_policy: str = _same_as(KVTierConfig, "kv_policy")
    kv_transport: Optional[str] = field(
        default=None,
        metadata={"help": "KV transport: preset=NAME (high-bw, low-latency, low-cost) and/or field=value pairs, "
                          "e.g. backend=shm,chunk_bytes=4MiB; None: no transport configured"},
    )
    role: str = _same_as(PDConfig, "role")
    pd_listen: str = _same_as(PDConfig, "pd_listen")
    pd_peers: tuple[str, ...] = _same_as(PDConfig, "pd_peers")
    pd_buffer_gib: float = _same_as(PDConfig, "pd_buffer_gib")
    pd_wait_s: float = _same_as(PDConfig, "pd_wait_s")
    scheduler: str = _same_as(SchedulerConfig, "scheduler")
    sched_trace: Optional[str] = _same_as(SchedulerConfig, "sched_trace")
    sched_aging_s: float = _same_as(SchedulerConfig, "sched_aging_s")
    sched_chunk_tokens: int = _same_as(SchedulerConfig, "sched_chunk_tokens")
    sched_on_unattainable: Literal["reject", "defer"] = _same_as(SchedulerConfig, "sched_on_unattainable")
    sched_tenant_weights: dict[str, float] = field(
        default_factory=dict, metadata=dict(SchedulerConfig.__dataclass_fields__["sched_tenant_weights"].metadata)
    )
    sched_decode_loops: int = _same_as(SchedulerConfig, "sched_decode_loops")
    sched_round_cut: bool = _same_as(SchedulerConfig, "sched_round_cut")
    sched_prefill_split: bool = _same_as(SchedulerConfig, "sched_prefill_split")
    sched_decode_pacing: bool = _same_as(SchedulerConfig, "sched_decode_pacing")
    sched_tpot_reserve: float = _same_as(SchedulerConfig, "sched_tpot_reserve")
    draft_model: Optional[str] = field(
        default=None,
        metadata={"help": "speculative decoding: a small causal LM checkpoint sharing the model's vocabulary "
                          "(Llama-architecture targets); None: off. Greedy output stays token-identical"},
    )
    num_speculative_tokens: int = field(
        default=3, metadata={"help": "speculative decoding: draft tokens proposed per step (1..16)"}
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.model is not None:
            check_str(owner, "model", self.model)
        check_choice(owner, "engine_kind", self.engine_kind, ENGINE_KINDS)
        check_choice(owner, "device", self.device.strip().lower() if isinstance(self.device, str) else self.device, device_choices())
        check_str(owner, "host", self.host)
        check_int(owner, "port", self.port, minimum=0)
        if self.port > 65535:
            raise invalid(owner, "port", self.port, "0 (pick a free port) or 1..65535")
        check_choice(owner, "dtype", self.dtype, DTYPES)
        check_choice(owner, "kv_dtype", self.kv_dtype, KV_DTYPES)
        self._check_kv_dtype_on_device(owner)
        if self.session_len is not None:
            check_int(owner, "session_len", self.session_len, minimum=16)
        if self.max_batch_size is not None:
            check_int(owner, "max_batch_size", self.max_batch_size, minimum=1)
        if self.cache_max_entry_count is not None:
            check_float(owner, "cache_max_entry_count", self.cache_max_entry_count)
            if not 0 < self.cache_max_entry_count < 1:
                raise invalid(owner, "cache_max_entry_count", self.cache_max_entry_count, "a fraction in (0, 1)")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise invalid(owner, "block_size", self.block_size, "a power of two >= 16 (16, 32, 64, 128, ...)")
        if self.model_name is not None:
            check_str(owner, "model_name", self.model_name)
        if self.draft_model is not None:
            check_str(owner, "draft_model", self.draft_model)
        check_int(owner, "num_speculative_tokens", self.num_speculative_tokens, minimum=1)
        if self.num_speculative_tokens > MAX_SPECULATIVE_TOKENS:
            raise invalid(owner, "num_speculative_tokens", self.num_speculative_tokens, f"1..{MAX_SPECULATIVE_TOKENS}")
        object.__setattr__(self, "api_keys", tuple(k.strip() for k in self.api_keys if k.strip()))
        check_choice(owner, "log_level", self.log_level, LOG_LEVELS)
        try:
            self.kv_tier_config()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}.{exc}") from None
        try:
            self.pd_config()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}.{exc}") from None
        try:
            self.scheduler_config()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}.{exc}") from None
        if self.kv_transport is not None:
            from sagellm.comm_backend.transport_config import parse_kv_transport

            try:
                parse_kv_transport(self.kv_transport)
            except ValueError as exc:
                raise ValueError(f"{owner}.kv_transport: {exc}") from None

    def _check_kv_dtype_on_device(self, owner: str) -> None:
        """fp8 KV on an explicitly chosen non-cpu device fails here; ``auto`` is checked once resolved (cli)."""
        from sagellm.hal import canonical_name

        device = self.device.strip().lower()
        if device != "auto":
            check_kv_dtype_on_device(owner, self.kv_dtype, canonical_name(device))

    def kv_tier_config(self) -> KVTierConfig:
        """The KV tiers behind the device prefix cache (validated)."""
        return KVTierConfig(
            kv_tiers=tuple(self.kv_tiers), host_cache_gib=self.host_cache_gib, ssd_cache_dir=self.ssd_cache_dir,
            ssd_cache_gib=self.ssd_cache_gib, kv_policy=self.kv_policy,
        )

    def pd_config(self) -> PDConfig:
        """The prefill/decode disaggregation role and its transfer settings (validated)."""
        return PDConfig(role=self.role, pd_listen=self.pd_listen, pd_peers=tuple(self.pd_peers),
                        pd_buffer_gib=self.pd_buffer_gib, pd_wait_s=self.pd_wait_s)

    def scheduler_config(self) -> SchedulerConfig:
        """The scheduling strategy and its options (validated)."""
        return SchedulerConfig(
            scheduler=self.scheduler, sched_trace=self.sched_trace, sched_aging_s=self.sched_aging_s,
            sched_chunk_tokens=self.sched_chunk_tokens, sched_on_unattainable=self.sched_on_unattainable,
            sched_tenant_weights=dict(self.sched_tenant_weights), sched_decode_loops=self.sched_decode_loops,
            sched_round_cut=self.sched_round_cut, sched_prefill_split=self.sched_prefill_split,
            sched_decode_pacing=self.sched_decode_pacing, sched_tpot_reserve=self.sched_tpot_reserve,
        )

    def spec_decode_profile(self):
        """The ``SpecDecodeProfile`` (validated), or None when no draft model is set."""
        if self.draft_model is None:
            return None
        from sagellm.accel.spec_decode import SpecDecodeProfile

        return SpecDecodeProfile(draft_model=self.draft_model, num_speculative_tokens=self.num_speculative_tokens)

    def kv_transport_config(self):
        """The parsed ``KVTransportConfig``, or None when ``kv_transport`` is unset."""
        if self.kv_transport is None:
            return None
        from sagellm.comm_backend.transport_config import parse_kv_transport

        return parse_kv_transport(self.kv_transport)


def render_yaml() -> str:
    """``configs/engines/sagellm.yaml``: every option with its help, env name and default."""
    lines = [
        "# sage llm engine start -- every option with its default.",
        "#",
        "# Use:  sage llm engine start --config configs/engines/sagellm.yaml [MODEL] [--flag ...]",
        "# Precedence: defaults < this file < SAGELLM_* environment < command-line flags.",
        "# Generated from sagellm.control_plane.engine_config.EngineStartConfig (render_yaml);",
        "# tests/unit/control_plane/test_engine_config.py fails when this file and the fields differ.",
        "",
    ]
    for spec in option_specs(EngineStartConfig):
        flag = spec.flag if spec.path != "model" else "the MODEL argument"
        lines.append(f"# {spec.help}")
        lines.append(f"# flag {flag}; env {spec.env}; accepts {spec.accepted}")
        lines.append(f"{spec.path}: {_yaml_value(spec.default)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _yaml_value(value: object) -> str:
    import json

    encoded = encode(value)
    if encoded is None:
        return "null"
    if isinstance(encoded, bool):
        return "true" if encoded else "false"
    if isinstance(encoded, list):
        return "[" + ", ".join(json.dumps(v) for v in encoded) + "]"
    if isinstance(encoded, str):
        return json.dumps(encoded)
    return str(encoded)


def engine_start_args(config: EngineStartConfig) -> list[str]:
    """The ``sage llm engine start`` arguments reproducing ``config`` (defaults left out)."""
    args: list[str] = [config.model] if config.model else []
    defaults = EngineStartConfig()
    for spec in option_specs(EngineStartConfig):
        if spec.path == "model":
            continue
        value = getattr(config, spec.path)
        if value == getattr(defaults, spec.path):
            continue
        if isinstance(value, bool):
            args.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif isinstance(value, tuple):
            args += [spec.flag, ",".join(value)]
        elif isinstance(value, dict):
            args += [spec.flag, ",".join(f"{k}={v!r}" for k, v in sorted(value.items()))]
        else:
            args += [spec.flag, str(value)]
    return args


def replace(config: EngineStartConfig, **changes: object) -> EngineStartConfig:
    return dataclasses.replace(config, **changes)
