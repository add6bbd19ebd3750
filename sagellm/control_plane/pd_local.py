"""A local PD deployment in one call: a prefill engine, decode engines and the PD router.

For benchmarks and demos on one host (``benchmarks/goodput.py`` can add a colocated-vs-PD arm
with it)::

    from sagellm.control_plane.pd_local import LocalPDDeployment

    with LocalPDDeployment.start(model_dir, decode_engines=1, engine_args=("--device", "cpu"),
                                 log_dir=Path("logs")) as pd:
        ...  # send OpenAI requests to pd.url (also /generate); pd.engine_urls lists the engines

Every process is ``sage llm engine start`` / ``python -m sagellm.control_plane.pd_router`` in
its own session on 127.0.0.1 with ports from ``SagePorts``; startup waits are bounded, and
``stop()`` terminates (then kills) them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sagellm.control_plane.ports import SagePorts

STARTUP_TIMEOUT_S = 300.0


@dataclass
class LocalPDDeployment:
    """The running processes; ``url`` is the router's base URL."""

    url: str
    prefill_url: str
    decode_urls: list[str]
    kv_address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def engine_urls(self) -> list[str]:
        return [self.prefill_url, *self.decode_urls]

    @classmethod
    def start(cls, model: str | os.PathLike[str], *, decode_engines: int = 1, engine_args: Sequence[str] = (),
              prefill_args: Sequence[str] = (), decode_args: Sequence[str] = (), log_dir: Path,
              env: dict[str, str] | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> LocalPDDeployment:
        """Start the engines (one at a time) and the router; raise with the log tail if one fails."""
        if decode_engines < 1:
            raise ValueError(f"decode_engines: got {decode_engines}; accepted: >= 1")
        log_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **(env or {})}
        kv_address = f"127.0.0.1:{SagePorts.allocate()}"
        deployment = cls(url="", prefill_url="", decode_urls=[], kv_address=kv_address)
        try:
            deployment.prefill_url = deployment._engine(
                model, log_dir / "prefill.log", [*engine_args, *prefill_args, "--role", "prefill", "--pd-listen", kv_address],
                environment, startup_timeout_s)
            for index in range(decode_engines):
                deployment.decode_urls.append(deployment._engine(
                    model, log_dir / f"decode{index}.log", [*engine_args, *decode_args, "--role", "decode", "--pd-peers", kv_address],
                    environment, startup_timeout_s))
            port = SagePorts.allocate()
            command = [sys.executable, "-m", "sagellm.control_plane.pd_router", "--port", str(port),
                       "--prefill", deployment.prefill_url, *sum((["--decode", u] for u in deployment.decode_urls), [])]
            deployment.url = f"http://127.0.0.1:{port}"
            deployment._spawn(command, log_dir / "router.log", environment)
            deployment._wait(deployment.url, deployment.processes[-1], log_dir / "router.log", startup_timeout_s)
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def _spawn(self, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(process)
        return process

    def _engine(self, model, log: Path, args: list[str], env: dict[str, str], timeout_s: float) -> str:
        port = SagePorts.allocate()
        command = [sys.executable, "-m", "sagellm.cli.main", "llm", "engine", "start", str(model),
                   "--host", "127.0.0.1", "--port", str(port), "--no-sample", *args]
        process = self._spawn(command, log, env)
        url = f"http://127.0.0.1:{port}"
        self._wait(url, process, log, timeout_s)
        return url

    @staticmethod
    def _wait(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(process.args[:6])} exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def __enter__(self) -> LocalPDDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
