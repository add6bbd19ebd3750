"""How each peer is started: command lines, environment, the KV budget and peer parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagellm.bench.peers import (
    LMDEPLOY_CACHE_FRACTION, PEER_PYTHON, REPO_ROOT, PeerSpec, ServerProfile, _command, kv_bytes_per_token,
    lmdeploy_memory_budget_gib,
    parse_peers,
)

SHAPE = {"num_layers": 4, "num_kv_heads": 2, "head_dim": 64, "vocab_size": 4096}
PROFILE = ServerProfile(kv_blocks=100, max_batch_size=8, max_model_len=2048)


def command(kind: str):
    return _command(PeerSpec(kind, kind), "/m", 1234, PROFILE, SHAPE, Path("/venv/bin/python"), Path("/scratch"))


def test_lmdeploy_budget_reproduces_its_block_count():
    block = kv_bytes_per_token(SHAPE, "float32") * 64
    assert block == 2 * 4 * 2 * 64 * 4 * 64
    free = lmdeploy_memory_budget_gib(SHAPE, PROFILE) * 2**30
    runtime = (4096 + 2 * 8) * 4096 * 2  # LMDeploy's runtime estimate
    assert int((free - runtime) * LMDEPLOY_CACHE_FRACTION / block) == 100


def test_sagellm_command():
    cmd, env = command("sagellm")
    assert cmd[:8] == [sys.executable, "-P", "-m", "sagellm.cli.main", "llm", "engine", "start", "/m"]
    assert cmd[cmd.index("--port") + 1] == "1234" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--kv-tiers") + 1] == "device,host" and "--prefix-caching" in cmd
    assert env["SAGELLM_PLUGINS"] == "all" and float(env["SAGELLM_CPU_MEMORY_GIB"]) == lmdeploy_memory_budget_gib(SHAPE, PROFILE)


def test_stock_command_has_only_the_cpu_device_plugin():
    cmd, env = command("lmdeploy-stock")
    assert cmd[:7] == [sys.executable, "-P", "-m", "lmdeploy", "serve", "api_server", "/m"]
    assert env["SAGELLM_PLUGINS"] == "cpu"
    for flag, value in (("--device", "cpu"), ("--server-name", "127.0.0.1"), ("--cache-block-seq-len", "64"),
                        ("--session-len", "2048"), ("--max-batch-size", "8")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--enable-prefix-caching" in cmd


def test_a_peer_interpreter_imports_sagellm_from_its_pythonpath_not_the_working_directory(tmp_path):
    """An A/B against another checkout (``--peer-env old:PYTHONPATH=...``) must run that checkout's code."""
    other = tmp_path / "other-checkout"
    (other / "sagellm").mkdir(parents=True)
    (other / "sagellm" / "__init__.py").write_text("")
    probe = "import sagellm, sys; print(sagellm.__file__)"
    env = {**os.environ, "PYTHONPATH": str(other)}
    seen = subprocess.run([*PEER_PYTHON, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()
    assert seen == str(other / "sagellm" / "__init__.py")
    without = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
    assert without == str(REPO_ROOT / "sagellm" / "__init__.py")  # what the peers ran before -P


def test_vllm_command_same_budget():
    cmd, env = command("vllm")
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--num-gpu-blocks-override") + 1] == "101"  # + vLLM's null block
    assert cmd[cmd.index("--max-model-len") + 1] == "2048" and cmd[cmd.index("--block-size") + 1] == "64"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_parse_peers():
    peers = parse_peers("sagellm,slow=sagellm,vllm", ["gpu=http://h:8000@42"], ["slow:SAGELLM_BENCH_INJECT_DELAY_MS=300"])
    assert [(p.name, p.kind) for p in peers] == [("sagellm", "sagellm"), ("slow", "sagellm"), ("vllm", "vllm"),
                                                 ("gpu", "endpoint")]
    assert peers[1].env == (("SAGELLM_BENCH_INJECT_DELAY_MS", "300"),)
    assert peers[3].url == "http://h:8000" and peers[3].pid == 42
    with pytest.raises(ValueError, match="unknown kind 'tgi'"):
        parse_peers("tgi")
    with pytest.raises(ValueError, match="repeated: sagellm"):
        parse_peers("sagellm,sagellm")
    with pytest.raises(ValueError, match="unknown peer"):
        parse_peers("sagellm", (), ["vllm:A=1"])


def test_profile_validation():
    with pytest.raises(ValueError, match="power of two"):
        ServerProfile(block_size=48)
    with pytest.raises(ValueError, match="exceeds the KV budget"):
        ServerProfile(kv_blocks=16, max_model_len=4096)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pause_stops_the_whole_server_group_and_stop_works_while_paused():
    import subprocess
    import time

    from sagellm.bench.peers import PeerSpec, RunningPeer

    # a server with a child process, in its own process group like start_peer makes them
    server = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                              start_new_session=True)
    peer = RunningPeer(spec=PeerSpec(name="s", kind="sagellm"), base_url="http://127.0.0.1:1", process=server)
    try:
        deadline = time.monotonic() + 10
        while len(_group(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = _group(server.pid)
        assert len(members) == 2
        assert peer.pause()
        time.sleep(0.2)
        assert {_state(pid) for pid in members} == {"T"}
        assert peer.resume()
        time.sleep(0.2)
        assert "T" not in {_state(pid) for pid in members}
        peer.pause()
        peer.stop(timeout_s=10)  # continues the group first, else SIGTERM would wait
        assert server.poll() is not None
        assert not peer.pause() and not peer.resume()  # nothing left to signal
    finally:
        if server.poll() is None:
            server.kill()
    endpoint = RunningPeer(spec=PeerSpec(name="e", kind="endpoint", url="http://127.0.0.1:1"), base_url="http://127.0.0.1:1")
    assert not endpoint.pause()  # external servers are never touched


def _group(pgid: int) -> list[int]:
    import os

    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and _state(int(entry)) != "Z":
                    members.append(int(entry))
            except (ProcessLookupError, FileNotFoundError):
                pass
    return members
