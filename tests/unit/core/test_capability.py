import pytest

from sagellm.core.capability import CapabilityDescriptor
from sagellm.core.quant import QuantizationProfile


def cpu(**kw):
    base = dict(device_kind="cpu", max_memory_bytes=8 << 30)
    base.update(kw)
    return CapabilityDescriptor(**base)


def test_defaults_and_queries():
    c = cpu(dtypes=["float32", "bfloat16"], features=["paged_attention"])
    assert c.dtypes == frozenset({"float32", "bfloat16"})
    assert c.supports_dtype("bfloat16") and not c.supports_dtype("float16")
    assert c.has_feature("paged_attention") and not c.has_feature("cuda_graph")
    assert c.kv_quant_policies == frozenset({0})
    assert c.interconnect == "none"


def test_supports_quantization():
    c = cpu(kv_quant_policies={0, 8})
    assert c.supports_quantization(QuantizationProfile(kv_dtype="int8"))
    assert c.supports_quantization(QuantizationProfile())
    assert not c.supports_quantization(QuantizationProfile(kv_dtype="int4"))
    assert c.supports_quantization(QuantizationProfile(kv_dtype="fp8_e4m3"))  # policy 8, float8 storage
    assert not cpu(kv_quant_policies={0, 4}).supports_quantization(QuantizationProfile(kv_dtype="fp8_e5m2"))
    cuda = cpu(device_kind="cuda", kv_quant_policies={0, 4, 8})
    assert cuda.supports_quantization(QuantizationProfile(kv_dtype="int8"))
    assert not cuda.supports_quantization(QuantizationProfile(kv_dtype="fp8_e4m3"))  # LMDeploy 0.11: none on cuda


@pytest.mark.parametrize("kw,fragment", [
    ({"device_kind": "npu"}, "CapabilityDescriptor.device_kind: got 'npu'; accepted: one of 'cpu', 'cuda', 'ascend', 'camb', 'maca', 'kunlun'"),
    ({"max_memory_bytes": 0}, "CapabilityDescriptor.max_memory_bytes: got 0; accepted: an integer >= 1"),
    ({"dtypes": ["float32", "fp4"]}, "CapabilityDescriptor.dtypes: got ['float32', 'fp4']; accepted: a non-empty subset of"),
    ({"kv_quant_policies": [0, 2]}, "CapabilityDescriptor.kv_quant_policies: got [0, 2]; accepted: a non-empty subset of 0, 4, 8"),
    ({"interconnect": "ethernet"}, "CapabilityDescriptor.interconnect: got 'ethernet'; accepted: one of 'none', 'unknown', 'pcie'"),
    ({"features": ["Paged Attention"]}, "CapabilityDescriptor.features: got 'Paged Attention'; accepted: lowercase identifiers"),
])
def test_validation(kw, fragment):
    with pytest.raises(ValueError) as err:
        cpu(**kw)
    assert str(err.value).startswith(fragment)


def test_round_trip_sorts_sets():
    c = CapabilityDescriptor(
        device_kind="cuda", max_memory_bytes=80 << 30, dtypes={"float16", "bfloat16"},
        kv_quant_policies={0, 4, 8}, interconnect="nvlink", features={"cuda_graph", "paged_attention"},
        device_name="H100", num_devices=8,
    )
    d = c.to_dict()
    assert d["dtypes"] == ["bfloat16", "float16"]
    assert d["kv_quant_policies"] == [0, 4, 8]
    assert d["features"] == ["cuda_graph", "paged_attention"]
    assert CapabilityDescriptor.from_json(c.to_json()) == c
    assert CapabilityDescriptor.from_yaml(c.to_yaml()) == c
