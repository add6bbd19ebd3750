import pytest

from sagellm.core.kv import KVCacheSchema
from sagellm.core.quant import QuantizationProfile


@pytest.mark.parametrize("kv_dtype,policy", [("auto", 0), ("int4", 4), ("int8", 8), ("fp8_e4m3", 8), ("fp8_e5m2", 8)])
def test_lmdeploy_quant_policy_on_cpu(kv_dtype, policy):
    assert QuantizationProfile(kv_dtype=kv_dtype).lmdeploy_quant_policy("cpu") == policy


@pytest.mark.parametrize("kv_dtype,policy", [("auto", 0), ("int4", 4), ("int8", 8)])
def test_integer_kv_policies_on_every_device(kv_dtype, policy):
    for device in ("cuda", "ascend", "camb", "maca"):
        assert QuantizationProfile(kv_dtype=kv_dtype).lmdeploy_quant_policy(device) == policy


@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("device", ["cuda", "ascend"])
def test_fp8_kv_only_on_cpu(kv_dtype, device):
    with pytest.raises(ValueError) as err:
        QuantizationProfile(kv_dtype=kv_dtype).lmdeploy_quant_policy(device)
    assert str(err.value) == (
        f"QuantizationProfile.kv_dtype: got {kv_dtype!r} on device {device!r}; LMDeploy 0.11 has no fp8 KV cache "
        f"there (sagellm's kernels serve it on 'cpu' only); accepted on {device!r}: 'auto', 'int8', 'int4'"
    )


def test_non_token_granularity_has_no_policy():
    p = QuantizationProfile(kv_dtype="int8", granularity="per_channel")
    with pytest.raises(ValueError, match="granularity: 'per_channel'.*accepted: 'per_token_head'"):
        p.lmdeploy_quant_policy("cpu")


def test_group_size_rules():
    assert QuantizationProfile(granularity="per_group", group_size=64).group_size == 64
    with pytest.raises(ValueError) as err:
        QuantizationProfile(granularity="per_group")
    assert str(err.value) == (
        "QuantizationProfile.group_size: got None; accepted: a positive power of two when granularity is 'per_group'"
    )
    with pytest.raises(ValueError, match="group_size: got 100; accepted: a positive power of two"):
        QuantizationProfile(granularity="per_group", group_size=100)
    with pytest.raises(ValueError, match="group_size: got 64; accepted: None unless granularity is 'per_group'"):
        QuantizationProfile(group_size=64)


def test_choices_are_listed():
    with pytest.raises(ValueError) as err:
        QuantizationProfile(weight_format="awq")
    assert str(err.value) == (
        "QuantizationProfile.weight_format: got 'awq'; accepted: one of "
        "'none', 'awq_int4', 'gptq_int4', 'w8a16', 'w8a8', 'fp8'"
    )
    with pytest.raises(ValueError, match="kv_dtype: got 'int2'; accepted: one of 'auto', 'int8', 'int4'"):
        QuantizationProfile(kv_dtype="int2")


def test_kv_cache_dtype():
    assert QuantizationProfile().kv_cache_dtype("bfloat16") == "bfloat16"
    assert QuantizationProfile(kv_dtype="int4").kv_cache_dtype("bfloat16") == "int4"
    with pytest.raises(ValueError, match="model_dtype: got 'half'"):
        QuantizationProfile().kv_cache_dtype("half")


def test_round_trip_and_flags():
    p = QuantizationProfile(kv_dtype="int8", weight_format="awq_int4", granularity="per_group", group_size=128)
    assert QuantizationProfile.from_yaml(p.to_yaml()) == p
    assert p.is_kv_quantized
    assert not QuantizationProfile().is_kv_quantized


def test_kv_cache_schema_for_a_model():
    s = QuantizationProfile(kv_dtype="int8").kv_cache_schema(
        num_layers=2, num_kv_heads=4, head_dim=64, model_dtype="bfloat16", block_size=16
    )
    assert s == KVCacheSchema(
        num_layers=2, num_kv_heads=4, head_dim=64, block_size=16, dtype="int8", scale_dtype="bfloat16"
    )
    # 256 + 256 data bytes + 2*4*2*2 scale/zero bytes = 544 per layer per token
    assert s.bytes_per_block() == 544 * 2 * 16
    plain = QuantizationProfile().kv_cache_schema(num_layers=1, num_kv_heads=1, head_dim=8, model_dtype="float32")
    assert (plain.dtype, plain.scale_dtype, plain.block_size) == ("float32", "float32", 64)
