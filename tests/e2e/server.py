"""Start `sage llm engine start` in a subprocess on 127.0.0.1 and wait until it serves (bounded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sagellm.control_plane.ports import SagePorts

STARTUP_TIMEOUT_S = 240.0
# LMDeploy 0.11's mp engine hands its RPC port to the server through a multiprocessing.Manager
# condition and shuts the manager down as soon as it has the port; when the engine process's
# final `release` reply loses that race, the engine process dies with EOFError and the server
# waits forever. Until a patch fixes the handshake, start_server recognises that crash in the
# log and starts once more instead of waiting out the timeout.
STARTUP_RACE = ("Process mp_engine_proc:", "EOFError")
STARTUP_ATTEMPTS = 2


class EngineStartupRace(RuntimeError):
    """An engine process died in LMDeploy's startup handshake (see STARTUP_RACE)."""


def hit_startup_race(log_path) -> bool:
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return False
    return all(marker in text for marker in STARTUP_RACE)


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


def start_server(model_dir: Path, log_path: Path, *extra_args: str, env: dict | None = None,
                 device: str = "cpu") -> RunningServer:
    """Start the server, once more if LMDeploy's startup handshake lost its race (see STARTUP_RACE)."""
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        log_file = log_path if attempt == 1 else log_path.with_name(f"{log_path.stem}-{attempt}{log_path.suffix}")
        port = SagePorts.allocate()
        command = [
            sys.executable, "-m", "sagellm.cli.main", "llm", "engine", "start", str(model_dir),
            "--device", device, "--host", "127.0.0.1", "--port", str(port), "--no-sample", *extra_args,
        ]
        with open(log_file, "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
            )
        server = RunningServer(process, f"http://127.0.0.1:{port}", log_file)
        if wait_healthy(server):
            return server
    raise EngineStartupRace(f"the engine died in LMDeploy's startup handshake {STARTUP_ATTEMPTS} times:\n{server.log()}")


def wait_healthy(server: RunningServer) -> bool:
    """True once /health answers; False if the engine hit the startup race (killed); raises otherwise."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        if hit_startup_race(server.log_path):
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            return False
        try:
            with urllib.request.urlopen(f"{server.base_url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT_S}s:\n{server.log()}")
