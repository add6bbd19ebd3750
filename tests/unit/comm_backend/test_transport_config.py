"""KV transport config: presets load and validate, --kv-transport parses, errors list what is valid."""

from __future__ import annotations

import pytest

from sagellm.comm_backend.transport_config import (
    CONFIG_ENV,
    KVTransportConfig,
    format_size,
    from_environment,
    get_preset,
    load_presets,
    parse_kv_transport,
    parse_size,
    presets_path,
    to_environment,
)
from sagellm.core.registry import UnknownNameError


def test_presets_load_and_validate():
    presets = load_presets()
    assert presets.names() == ("high-bw", "low-cost", "low-latency")
    high = presets.get("high-bw").config
    assert (high.backend, high.chunk_bytes, high.overlap_streams, high.zero_copy, high.preset) == (
        "torch_dist", 16 << 20, 4, True, "high-bw"
    )
    low = presets.get("low-latency").config
    assert (low.backend, low.chunk_bytes, low.prefetch_depth) == ("shm", 256 << 10, 1)
    cheap = presets.get("low-cost").config
    assert (cheap.backend, cheap.compression, cheap.zero_copy) == ("tcp", "lz4", False)
    assert all(presets.get(n).description for n in presets.names())
    assert presets_path().name == "kv_transport_presets.yaml"


def test_bad_preset_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        parse_kv_transport("preset=fastest")
    assert str(err.value) == "unknown kv transport preset 'fastest'; valid names: ['high-bw', 'low-cost', 'low-latency']"
    with pytest.raises(UnknownNameError, match="valid names"):
        get_preset("nope")


def test_parse_specs():
    assert parse_kv_transport("preset=low-latency") == get_preset("low-latency").config
    cfg = parse_kv_transport("preset=high-bw, chunk_bytes=8MiB ,prefetch_depth=2")
    assert (cfg.backend, cfg.chunk_bytes, cfg.prefetch_depth, cfg.preset) == ("torch_dist", 8 << 20, 2, "high-bw")
    cfg = parse_kv_transport("backend=shm,chunk_bytes=4MiB")
    assert cfg == KVTransportConfig(backend="shm", chunk_bytes=4 << 20)
    cfg = parse_kv_transport("backend=tcp,compression=zstd,zero_copy=no,target_dtype=float16,overlap_streams=3")
    assert (cfg.compression, cfg.zero_copy, cfg.target_dtype, cfg.overlap_streams) == ("zstd", False, "float16", 3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "--kv-transport: got an empty value"),
        ("backend", "'backend' is not key=value"),
        ("backend=shm,backend=tcp", "'backend' given twice"),
        ("speed=fast", "unknown field 'speed'; valid fields: backend, target_dtype, chunk_bytes"),
        ("backend=rdma", "backend: got 'rdma'; accepted: one of 'shm', 'tcp', 'torch_dist', 'mooncake', 'dlslime'"),
        ("chunk_bytes=4XB", "chunk_bytes: got '4XB'; accepted: a byte count or a size such as 4MiB"),
        ("chunk_bytes=1KiB", "chunk_bytes: got 1024; accepted: an integer >= 4096"),
        ("chunk_bytes=2GiB", "4096 .. 1073741824 bytes"),
        ("overlap_streams=0", "overlap_streams: got 0; accepted: an integer >= 1"),
        ("overlap_streams=two", "option 'overlap_streams' from --kv-transport: got 'two'; accepted: an integer"),
        ("target_dtype=fp64", "target_dtype: got 'fp64'"),
        ("backend=tcp,zero_copy=true", "zero_copy: got True; accepted: false with backend 'tcp'"),
        ("zero_copy=true,compression=lz4", "compression: got 'lz4'; accepted: 'none' when zero_copy is true"),
    ],
)
def test_invalid_specs(spec, message):
    with pytest.raises(ValueError) as err:
        parse_kv_transport(spec)
    assert message in str(err.value)


def test_sizes():
    assert parse_size("4MiB") == 4 << 20
    assert parse_size("512 KiB") == 512 << 10
    assert parse_size("1gb") == 10**9
    assert parse_size("1.5MiB") == 3 << 19
    assert parse_size(65536) == 65536
    for bad in ("4 M", "-1", "lots", True, 1.5):
        with pytest.raises(ValueError, match="a byte count or a size such as 4MiB"):
            parse_size(bad)
    assert [format_size(n) for n in (4 << 20, 1 << 30, 1536, 1000)] == ["4MiB", "1GiB", "1536", "1000"]


def test_broken_presets_files(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("presets:\n  half:\n    backend: shm\n")
    with pytest.raises(ValueError, match=r"preset 'half': missing field\(s\) target_dtype, chunk_bytes"):
        load_presets(f)
    f.write_text("presets: {}\n")
    with pytest.raises(ValueError, match="expected a non-empty mapping under 'presets'"):
        load_presets(f)
    with pytest.raises(ValueError, match="cannot read"):
        load_presets(tmp_path / "absent.yaml")


def test_presets_file_override(tmp_path, monkeypatch):
    f = tmp_path / "p.yaml"
    f.write_text(
        "presets:\n  mine:\n    backend: tcp\n    target_dtype: auto\n    chunk_bytes: 64KiB\n"
        "    overlap_streams: 1\n    prefetch_depth: 0\n    zero_copy: false\n    compression: none\n"
    )
    monkeypatch.setenv("SAGELLM_KV_TRANSPORT_PRESETS", str(f))
    assert parse_kv_transport("preset=mine").chunk_bytes == 64 << 10


def test_environment_hand_over():
    cfg = parse_kv_transport("preset=low-cost")
    env = to_environment(cfg)
    assert from_environment(env) == cfg
    assert from_environment({}) is None
    with pytest.raises(ValueError, match=CONFIG_ENV):
        from_environment({CONFIG_ENV: '{"backend": "pigeon"}'})
    assert "preset=low-cost backend=tcp" in cfg.describe()
