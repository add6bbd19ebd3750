"""Which KV tiers an engine uses and how large they are (file < ``SAGELLM_*`` env < flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

TIER_NAMES = ("device", "host", "ssd")


@dataclass(frozen=True)
class KVTierConfig:
    kv_tiers: tuple[str, ...] = field(
        default=("device", "host"),
        metadata={"help": "KV tiers, fastest first: device (always), host (DRAM), ssd (files). e.g. device,host,ssd"},
    )
    host_cache_gib: float = field(default=1.0, metadata={"help": "host DRAM tier size in GiB"})
    ssd_cache_dir: str | None = field(default=None, metadata={"help": "directory of the SSD tier (required with ssd)"})
    ssd_cache_gib: float = field(default=16.0, metadata={"help": "SSD tier size in GiB"})
    kv_policy: str = field(default="lru", metadata={"help": "eviction policy of the host/SSD tiers: lru, lfu, cost_aware"})

    def __post_init__(self) -> None:
        tiers = tuple(self.kv_tiers)
        object.__setattr__(self, "kv_tiers", tiers)
        unknown = [t for t in tiers if t not in TIER_NAMES]
        if unknown:
            raise ValueError(f"kv_tiers: unknown tier(s) {', '.join(unknown)}; accepted: {', '.join(TIER_NAMES)}")
        if not tiers or tiers[0] != "device" or len(set(tiers)) != len(tiers):
            raise ValueError(f"kv_tiers: got {','.join(tiers) or '(empty)'}; accepted: 'device' first, each tier once")
        order = [TIER_NAMES.index(t) for t in tiers]
        if order != sorted(order):
            raise ValueError(f"kv_tiers: got {','.join(tiers)}; tiers must be listed fastest first (device,host,ssd)")
        if "host" in tiers and not self.host_cache_gib > 0:
            raise ValueError(f"host_cache_gib: got {self.host_cache_gib}; accepted: > 0 when the host tier is on")
        if "ssd" in tiers:
            if not self.ssd_cache_dir:
                raise ValueError("ssd_cache_dir: required when the ssd tier is on (--ssd-cache-dir / SAGELLM_SSD_CACHE_DIR)")
            if not self.ssd_cache_gib > 0:
                raise ValueError(f"ssd_cache_gib: got {self.ssd_cache_gib}; accepted: > 0 when the ssd tier is on")
        from sagellm.kv_policy import KV_POLICIES

        if self.kv_policy not in KV_POLICIES:
            raise ValueError(f"kv_policy: got {self.kv_policy!r}; accepted: {', '.join(KV_POLICIES.names())}")

    @property
    def offload_enabled(self) -> bool:
        return len(self.kv_tiers) > 1


def to_environment(config: KVTierConfig) -> dict[str, str]:
    """The ``SAGELLM_*`` variables that hand ``config`` to the engine process (the plugin reads them)."""
    from sagellm.core.config import env_name

    env = {
        env_name("kv_tiers"): ",".join(config.kv_tiers),
        env_name("host_cache_gib"): repr(float(config.host_cache_gib)),
        env_name("ssd_cache_gib"): repr(float(config.ssd_cache_gib)),
        env_name("kv_policy"): config.kv_policy,
    }
    if config.ssd_cache_dir:
        env[env_name("ssd_cache_dir")] = config.ssd_cache_dir
    return env
