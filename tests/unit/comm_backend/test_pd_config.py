"""PDConfig validation and its hand-over to the engine process."""

from __future__ import annotations

import pytest

from sagellm.comm_backend.pd_config import PDConfig, to_environment
from sagellm.core.config import load_config


def test_defaults_are_colocated():
    assert PDConfig() == PDConfig(role="both", pd_listen="127.0.0.1:0", pd_peers=(), pd_buffer_gib=1.0, pd_wait_s=2.0)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"role": "mixed"}, "PDConfig.role: got 'mixed'; accepted: one of both, prefill, decode"),
        ({"role": "decode"}, "the decode role needs at least one prefill engine"),
        ({"role": "decode", "pd_peers": ("nohost",)}, "PDConfig.pd_peers: got 'nohost'"),
        ({"pd_listen": "localhost"}, "PDConfig.pd_listen: got 'localhost'"),
        ({"pd_buffer_gib": 0}, "PDConfig.pd_buffer_gib: got 0"),
        ({"pd_wait_s": 61}, r"PDConfig.pd_wait_s: got 61; accepted: seconds in \[0, 60\]"),
    ],
)
def test_bad_values_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        PDConfig(**fields)


def test_environment_round_trip(monkeypatch):
    config = PDConfig(role="decode", pd_peers=("127.0.0.1:7100", "10.0.0.2:7100"), pd_wait_s=0.5)
    for name, value in to_environment(config).items():
        monkeypatch.setenv(name, value)
    assert load_config(PDConfig) == config
