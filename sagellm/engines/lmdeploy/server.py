"""Start LMDeploy's OpenAI-compatible server on the patched engine with sagellm's plugins.

This is what ``sage llm engine start --engine-kind sagellm`` runs: it resolves the device and
dtype, builds LMDeploy's ``PytorchEngineConfig`` and hands over to LMDeploy's own
``api_server.serve`` (the same server ``lmdeploy serve api_server`` runs).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sagellm.control_plane.ports import SagePorts

if TYPE_CHECKING:
    from sagellm.accel.spec_decode import SpecDecodeProfile
    from sagellm.comm_backend.pd_config import PDConfig
    from sagellm.comm_backend.transport_config import KVTransportConfig
    from sagellm.kv_runtime.config import KVTierConfig
    from sagellm.scheduler_ir.config import SchedulerConfig

CPU_DEFAULT_CACHE_FRACTION = 0.1


@dataclass
class EngineServerConfig:
    model: str
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 0
    dtype: str = "auto"
    kv_dtype: str = "auto"  # QuantizationProfile.kv_dtype -> PytorchEngineConfig.quant_policy (+ cpu KV storage dtype)
    session_len: int | None = None
    max_batch_size: int | None = None
    cache_max_entry_count: float | None = None
    block_size: int = 64
    enable_prefix_caching: bool = True
    model_name: str | None = None
    api_keys: list[str] = field(default_factory=list)
    log_level: str = "WARNING"
    sample_request: bool = True
    kv_transport: KVTransportConfig | None = None
    kv_tiers: KVTierConfig | None = None  # None: the SAGELLM_* environment decides
    pd: PDConfig | None = None  # prefill/decode role; None: the SAGELLM_* environment decides
    scheduler: SchedulerConfig | None = None  # scheduling strategy; None: the SAGELLM_* environment decides
    spec_decode: SpecDecodeProfile | None = None  # speculative decoding with a draft model; None: off

    def __post_init__(self) -> None:
        if self.cache_max_entry_count is not None and not 0 < self.cache_max_entry_count < 1:
            raise ValueError(
                f"cache_max_entry_count must be a fraction in (0, 1), got {self.cache_max_entry_count}"
            )
        if self.session_len is not None and self.session_len < 16:
            raise ValueError(f"session_len must be >= 16 tokens, got {self.session_len}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size}")


def checkpoint_dtype(model_path: str) -> str | None:
    """The ``torch_dtype`` a HF checkpoint declares, if any."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    value = data.get("torch_dtype") or data.get("dtype")
    return str(value).removeprefix("torch.") if value else None


def resolve_dtype(requested: str, device_type: str, model_path: str) -> str:
    """LMDeploy's ``auto`` turns float32 checkpoints into float16; on CPU keep float32 (exact, and fast there)."""
    if requested != "auto" or device_type != "cpu":
        return requested
    declared = checkpoint_dtype(model_path)
    return "bfloat16" if declared == "bfloat16" else "float32"


def build_engine_config(config: EngineServerConfig, device_type: str):
    from lmdeploy import PytorchEngineConfig

    from sagellm.core.quant import QuantizationProfile

    cache_fraction = config.cache_max_entry_count
    if cache_fraction is None:
        cache_fraction = CPU_DEFAULT_CACHE_FRACTION if device_type == "cpu" else 0.8
    kwargs = dict(
        device_type=device_type,
        dtype=resolve_dtype(config.dtype, device_type, config.model),
        session_len=config.session_len,
        cache_max_entry_count=cache_fraction,
        block_size=config.block_size,
        enable_prefix_caching=config.enable_prefix_caching,
        eager_mode=device_type == "cpu",
        # fp8 is policy 8 with float8 storage, which the engine process picks up from SAGELLM_KV_DTYPE (serve)
        quant_policy=QuantizationProfile(kv_dtype=config.kv_dtype).lmdeploy_quant_policy(device_type),
    )
    if config.max_batch_size is not None:
        kwargs["max_batch_size"] = config.max_batch_size
    loops = [] if config.scheduler is None else [config.scheduler.decode_loops()]
    if config.spec_decode is not None:
        from sagellm.engines.lmdeploy.spec_decode import engine_overrides

        loops.append(engine_overrides(config.spec_decode, device_type)["prefill_interval"])
    loops = [n for n in loops if n is not None]
    if loops:  # the shorter round serves both: admission latency and work wasted after a stop
        kwargs["prefill_interval"] = min(loops)
    return PytorchEngineConfig(**kwargs)


def kv_storage_environment(config: EngineServerConfig, device_type: str) -> dict[str, str]:
    """The variables an engine process needs to allocate the KV storage ``build_engine_config`` implies.

    On cpu, ``quant_policy`` 8 is int8 or fp8 depending on the device spec's storage dtype, which a
    spawned engine process sets from ``SAGELLM_KV_DTYPE`` when it registers the device.
    """
    if device_type != "cpu":
        return {}
    from sagellm.engines.lmdeploy.cpu.device import KV_DTYPE_ENV

    return {KV_DTYPE_ENV: config.kv_dtype}


def _print_sample_request(base_url: str, model_name: str, api_keys: list[str], timeout_s: float = 600.0) -> None:
    """Wait for the server, send one chat request and print it with the reply, as a usage example."""
    headers = {"Content-Type": "application/json"}
    if api_keys:
        headers["Authorization"] = f"Bearer {api_keys[0]}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        print(f"[sagellm] server at {base_url} did not become healthy within {timeout_s:.0f}s", flush=True)
        return
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Hello! What can you do?"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
    except OSError as err:
        print(f"[sagellm] sample request failed: {err}", flush=True)
        return
    auth = f" -H 'Authorization: Bearer {api_keys[0]}'" if api_keys else ""
    print(
        "[sagellm] sample request:\n"
        f"  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f"    -d '{json.dumps(body)}'\n"
        f"[sagellm] reply ({reply['usage']['completion_tokens']} tokens): "
        f"{reply['choices'][0]['message']['content']!r}",
        flush=True,
    )


def serve(config: EngineServerConfig, device_type: str) -> None:
    """Serve until interrupted (blocking)."""
    from sagellm.telemetry.multiproc import prepare_multiprocess_dir

    # before LMDeploy creates any metric or spawns its engine process (which inherits the variable)
    prepare_multiprocess_dir()
    from lmdeploy.serve.openai.api_server import serve as lmdeploy_serve

    port = SagePorts.resolve(config.port, config.host)
    base_url = f"http://{config.host}:{port}"
    model_name = config.model_name or config.model
    engine_config = build_engine_config(config, device_type)
    print(
        f"[sagellm] serving {model_name} on device={device_type} dtype={engine_config.dtype} at {base_url} "
        "(OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/models)",
        flush=True,
    )
    if config.kv_transport is not None:
        from sagellm.comm_backend.transport_config import to_environment

        os.environ.update(to_environment(config.kv_transport))
        print(f"[sagellm] KV transport: {config.kv_transport.describe()}", flush=True)
    # the engine process (a spawned child) registers the cpu device afresh and reads its KV storage dtype here
    os.environ.update(kv_storage_environment(config, device_type))
    if config.kv_tiers is not None:
        from sagellm.kv_runtime.config import to_environment as tier_environment

        # the engine process (a child) installs the tiers from these variables
        os.environ.update(tier_environment(config.kv_tiers))
        print(f"[sagellm] KV tiers: {','.join(config.kv_tiers.kv_tiers)} (policy {config.kv_tiers.kv_policy})", flush=True)
    if config.pd is not None:
        from sagellm.comm_backend.pd_config import to_environment as pd_environment

        os.environ.update(pd_environment(config.pd))  # the pd plugin in the engine process reads these
        if config.pd.role != "both":
            print(f"[sagellm] PD role: {config.pd.role}", flush=True)
    if config.scheduler is not None:
        from sagellm.scheduler_ir.config import to_environment as scheduler_environment

        os.environ.update(scheduler_environment(config.scheduler))  # the scheduler plugin in the engine process reads these
        if config.scheduler.scheduler != "fifo" or config.scheduler.sched_trace:
            trace = f" (plan trace {config.scheduler.sched_trace})" if config.scheduler.sched_trace else ""
            print(f"[sagellm] scheduler: {config.scheduler.scheduler}{trace}", flush=True)
    if config.sample_request:
        threading.Thread(
            target=_print_sample_request, args=(base_url, model_name, config.api_keys), daemon=True
        ).start()
    os.environ.setdefault("UVICORN_LOG_LEVEL", "warning")
    speculative = None
    if config.spec_decode is not None:
        from sagellm.engines.lmdeploy.spec_decode import speculative_config

        speculative = speculative_config(config.spec_decode, config.model)
        print(f"[sagellm] speculative decoding: draft {config.spec_decode.draft_model}, "
              f"{config.spec_decode.num_speculative_tokens} tokens per step", flush=True)
    lmdeploy_serve(
        config.model,
        speculative_config=speculative,
        model_name=model_name,
        backend="pytorch",
        backend_config=engine_config,
        server_name=config.host,
        server_port=port,
        log_level=config.log_level,
        api_keys=config.api_keys or None,
    )
