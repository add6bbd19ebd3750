"""Start `sage llm engine start` in a subprocess on 127.0.0.1 and wait until it serves (bounded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sagellm.control_plane.ports import SagePorts

STARTUP_TIMEOUT_S = 240.0


@dataclass
class RunningServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def start_server(model_dir: Path, log_path: Path, *extra_args: str, env: dict | None = None) -> RunningServer:
    port = SagePorts.allocate()
    command = [
        sys.executable, "-m", "sagellm.cli.main", "llm", "engine", "start", str(model_dir),
        "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--no-sample", *extra_args,
    ]
    log = open(log_path, "w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT_S}s:\n{server.log()}")
