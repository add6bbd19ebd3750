"""``sage gateway start``: build a ``ControlPlaneManager`` from a ``GatewayConfig`` and serve it.

Engines are given as specs, a bare value or comma-separated ``key=value`` pairs::

    --engine http://10.0.0.5:8000                          # external, models from /v1/models
    --engine url=http://10.0.0.6:8000,kind=vllm,device=cuda,capacity=64,api_key=KEY
    --start-engine /models/qwen                            # a sagellm engine subprocess
    --start-engine model=/models/qwen,name=qwen,device=cpu,capacity=4
    --engine url=http://10.0.0.8:8000,slo_classes=batch          # only batch requests go there

Options layer as everywhere in sagellm: defaults < ``--config FILE`` < ``SAGELLM_GATEWAY_*``
environment < flags.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from sagellm.control_plane.engine_config import EngineStartConfig
from sagellm.control_plane.manager import DEFAULT_CAPACITY, ControlPlaneManager, HealthPolicy
from sagellm.control_plane.routing import (
    DEFAULT_CHUNK_CHARS,
    DEFAULT_MAX_CHUNKS,
    ROUTING_POLICIES,
    SLO_CLASSES,
    SLO_CLASSES_LABEL,
)
from sagellm.core.config import load_config
from sagellm.core.engine_info import EngineKind
from sagellm.core.validation import check_choice, check_float, check_int, check_str, invalid

ENV_PREFIX = "SAGELLM_GATEWAY"
ENDPOINT_KEYS: tuple[str, ...] = ("url", "kind", "id", "model", "device", "capacity", "api_key", "slo_classes")
START_KEYS: tuple[str, ...] = ("model", "name", "device", "capacity", "slo_classes")


@dataclass(frozen=True)
class GatewayConfig:
    """Options of ``sage gateway start``."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; loopback only by default"})
    port: int = field(default=0, metadata={"help": "port to bind; 0 picks a free one (printed and recorded)"})
    engines: tuple[str, ...] = field(
        default=(),
        metadata={"help": "external engines: URL or url=URL,kind=vllm,device=cuda,capacity=N,api_key=KEY,slo_classes=a+b "
                          "(flag --engine, repeatable)", "cli": False},
    )
    start_engines: tuple[str, ...] = field(
        default=(),
        metadata={"help": "sagellm engines to start: MODEL or model=PATH,name=NAME,device=cpu,capacity=N "
                          "(flag --start-engine, repeatable)", "cli": False},
    )
    engine_args: str = field(default="", metadata={"help": "extra `sage llm engine start` arguments for started engines"})
    engine_config: Optional[str] = field(default=None, metadata={"help": "--config FILE passed to started engines"})
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "bearer tokens required on every route but /health (plus SAGELLM_API_KEYS)"}
    )
    policy: str = field(default="prefix_affinity", metadata={"help": "routing policy: prefix_affinity, least_loaded, round_robin"})
    health_interval_s: float = field(default=2.0, metadata={"help": "seconds between engine health checks"})
    health_timeout_s: float = field(default=2.0, metadata={"help": "timeout of one /health call"})
    unhealthy_after: int = field(default=3, metadata={"help": "consecutive failed checks that mark an engine unhealthy"})
    startup_timeout_s: float = field(default=600.0, metadata={"help": "how long a started engine may take to become healthy"})
    request_timeout_s: float = field(default=600.0, metadata={"help": "how long one forwarded request may take"})
    prefix_chunk_chars: int = field(default=DEFAULT_CHUNK_CHARS, metadata={"help": "characters per prompt-prefix chunk hashed for affinity"})
    prefix_max_chunks: int = field(default=DEFAULT_MAX_CHUNKS, metadata={"help": "prefix chunks hashed per request (0 disables prefix affinity)"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "host", self.host)
        check_int(owner, "port", self.port, minimum=0)
        if self.port > 65535:
            raise invalid(owner, "port", self.port, "0 (pick a free port) or 1..65535")
        check_choice(owner, "policy", self.policy, ROUTING_POLICIES.names())
        check_float(owner, "health_interval_s", self.health_interval_s, positive=True)
        check_float(owner, "health_timeout_s", self.health_timeout_s, positive=True)
        check_int(owner, "unhealthy_after", self.unhealthy_after, minimum=1)
        check_float(owner, "startup_timeout_s", self.startup_timeout_s, positive=True)
        check_float(owner, "request_timeout_s", self.request_timeout_s, positive=True)
        check_int(owner, "prefix_chunk_chars", self.prefix_chunk_chars, minimum=1)
        check_int(owner, "prefix_max_chunks", self.prefix_max_chunks, minimum=0)
        check_choice(owner, "log_level", self.log_level, ("critical", "error", "warning", "info", "debug"))
        for name, specs, bare, keys in (
            ("engines", self.engines, "url", ENDPOINT_KEYS),
            ("start_engines", self.start_engines, "model", START_KEYS),
        ):
            for spec in specs:
                try:
                    engine_labels(parse_engine_spec(spec, bare, keys))
                except ValueError as exc:
                    raise ValueError(f"{owner}.{name}: {exc}") from None
        try:
            shlex.split(self.engine_args)
        except ValueError as exc:
            raise invalid(owner, "engine_args", self.engine_args, f"shell-style arguments ({exc})") from None


def load_gateway_config(file: str | os.PathLike[str] | None = None, overrides: dict | None = None) -> GatewayConfig:
    return load_config(GatewayConfig, file=file, overrides=overrides, env_prefix=ENV_PREFIX)


def parse_engine_spec(spec: str, bare_key: str, keys: Sequence[str]) -> dict[str, str]:
    """``"VALUE"`` -> ``{bare_key: VALUE}``; ``"k=v,k2=v2"`` -> a dict (keys checked against ``keys``).

    Raises:
        ValueError: empty spec, unknown key (listing the valid ones), or no ``bare_key``.
    """
    text = spec.strip()
    if not text:
        raise ValueError(f"empty engine spec; accepted: a {bare_key} or key=value pairs with keys {', '.join(keys)}")
    head = text.split(",", 1)[0]
    if "=" not in head or not re.fullmatch(r"[a-z_]+", head.split("=", 1)[0].strip()):
        return {bare_key: text}
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise ValueError(f"engine spec {spec!r}: {item!r} is not key=value with a key among {', '.join(keys)}")
        out[key] = value.strip()
    if not out.get(bare_key):
        raise ValueError(f"engine spec {spec!r}: {bare_key}= is required")
    return out


def engine_labels(fields: dict[str, str]) -> dict[str, str]:
    """Routing labels of an engine spec: ``slo_classes=interactive+standard`` (``+``-separated)."""
    if not fields.get("slo_classes"):
        return {}
    classes = [c.strip() for c in fields["slo_classes"].split("+") if c.strip()]
    unknown = [c for c in classes if c not in SLO_CLASSES]
    if unknown or not classes:
        raise ValueError(
            f"slo_classes: got {fields['slo_classes']!r}; accepted: '+'-separated names among {', '.join(SLO_CLASSES)}"
        )
    return {SLO_CLASSES_LABEL: ",".join(classes)}


def build_manager(config: GatewayConfig) -> ControlPlaneManager:
    """Register the external engines and start the sagellm ones (does not wait for them)."""
    manager = ControlPlaneManager(
        policy=config.policy,
        health=HealthPolicy(
            interval_s=config.health_interval_s,
            timeout_s=config.health_timeout_s,
            unhealthy_after=config.unhealthy_after,
            startup_timeout_s=config.startup_timeout_s,
        ),
        prefix_chunk_chars=config.prefix_chunk_chars,
        prefix_max_chunks=config.prefix_max_chunks,
    )
    try:
        for spec in config.engines:
            fields = parse_engine_spec(spec, "url", ENDPOINT_KEYS)
            labels = engine_labels(fields)
            manager.register_endpoint(
                fields["url"],
                kind=fields.get("kind", EngineKind.OPENAI.value),
                engine_id=fields.get("id"),
                model=fields.get("model"),
                device=fields.get("device", "unknown"),
                capacity=int(fields.get("capacity", DEFAULT_CAPACITY)),
                api_key=fields.get("api_key"),
                labels=labels,
                timeout_s=config.health_timeout_s,
            )
        extra = shlex.split(config.engine_args)
        if config.engine_config:
            extra = ["--config", config.engine_config, *extra]
        for spec in config.start_engines:
            fields = parse_engine_spec(spec, "model", START_KEYS)
            engine = EngineStartConfig(
                model=fields["model"],
                model_name=fields.get("name"),
                device=fields.get("device", "auto"),
                host="127.0.0.1",
                sample=False,
            )
            labels = engine_labels(fields)
            capacity = int(fields["capacity"]) if fields.get("capacity") else None
            manager.start_engine(engine, extra_args=extra, capacity=capacity, labels=labels)
    except BaseException:
        manager.shutdown()
        raise
    return manager


def serve(config: GatewayConfig, *, on_ready=None) -> None:
    """Run the gateway until interrupted; writes the discovery record while it listens."""
    import uvicorn

    from sagellm.control_plane import discovery
    from sagellm.control_plane.gateway import Gateway
    from sagellm.control_plane.ports import SagePorts

    if not config.engines and not config.start_engines:
        raise ValueError("the gateway needs engines: pass --engine URL and/or --start-engine MODEL")
    port = SagePorts.resolve(config.port, config.host)
    manager = build_manager(config)
    gateway = Gateway(manager, api_keys=config.api_keys, request_timeout_s=config.request_timeout_s)
    base_url = f"http://{config.host}:{port}"
    server = uvicorn.Server(uvicorn.Config(gateway.app, host=config.host, port=port, log_level=config.log_level))

    def announce() -> None:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline and not server.should_exit:
            time.sleep(0.05)
        if not server.started:
            return
        discovery.write_record(
            discovery.GatewayRecord(pid=os.getpid(), base_url=base_url, started_at=time.time(), auth_required=bool(gateway.api_keys))
        )
        print(f"[sagellm] gateway at {base_url} (OpenAI-compatible /v1); engines: "
              + ", ".join(f"{s.info.engine_id}={s.info.base_url}" for s in manager.engines()), flush=True)
        if on_ready is not None:
            on_ready(base_url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        discovery.remove_record(os.getpid())
        manager.shutdown()

