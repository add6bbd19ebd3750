import pytest

from sagellm.core.kv import KVCacheSchema, KVTier


def schema(**kw):
    base = dict(num_layers=2, num_kv_heads=4, head_dim=64, block_size=16)
    base.update(kw)
    return KVCacheSchema(**base)


def test_float16_bytes():
    s = schema(dtype="float16")
    # per layer per token: K 4*64*2 = 512, V 512 -> 1024; x 2 layers = 2048; x 16 tokens = 32768
    assert s.bytes_per_token_per_layer() == 1024
    assert s.bytes_per_token() == 2048
    assert s.bytes_per_block() == 32768


def test_float32_and_bfloat16_bytes():
    assert schema(dtype="float32").bytes_per_block() == 65536
    assert schema(dtype="bfloat16").bytes_per_block() == 32768


def test_int8_adds_scale_and_zero_per_token_per_head():
    s = schema(dtype="int8", scale_dtype="float16")
    # data: K 4*64*1 = 256, V 256; scale+zero: 2 (K,V) * 4 heads * 2 * 2 bytes = 32 -> 544 per layer
    assert s.bytes_per_token_per_layer() == 544
    assert s.bytes_per_token() == 1088
    assert s.bytes_per_block() == 17408


def test_int4_packs_two_elements_per_byte():
    s = schema(dtype="int4", scale_dtype="bfloat16")
    # data: K 4*64/2 = 128, V 128; scale+zero 32 -> 288 per layer, 576 per token, 9216 per block
    assert s.bytes_per_block() == 9216


def test_int8_with_float32_scales():
    # scale+zero: 2 * 4 * 2 * 4 bytes = 64; 256 + 256 + 64 = 576 per layer
    assert schema(dtype="int8", scale_dtype="float32").bytes_per_token_per_layer() == 576


def test_fp8_has_no_per_token_scales():
    assert schema(dtype="fp8_e4m3").bytes_per_token_per_layer() == 512
    assert not schema(dtype="fp8_e5m2").is_scaled


def test_distinct_value_head_dim():
    s = schema(dtype="float16", v_head_dim=32)
    # K 4*64*2 = 512, V 4*32*2 = 256
    assert s.bytes_per_token_per_layer() == 768
    assert s.value_head_dim == 32


def test_block_arithmetic():
    s = schema()
    assert s.num_blocks_for(0) == 0
    assert s.num_blocks_for(16) == 1
    assert s.num_blocks_for(17) == 2
    assert s.blocks_in(32768 * 3 + 5) == 3


@pytest.mark.parametrize("kw,field,fragment", [
    ({"block_size": 48}, "block_size", "a positive power of two"),
    ({"block_size": 0}, "block_size", "a positive power of two"),
    ({"num_layers": 0}, "num_layers", "an integer >= 1"),
    ({"dtype": "fp16"}, "dtype", "'float32', 'float16', 'bfloat16', 'fp8_e4m3', 'fp8_e5m2', 'int8', 'int4'"),
    ({"layout": "vllm"}, "layout", "'lmdeploy_paged', 'contiguous'"),
    ({"scale_dtype": "int8"}, "scale_dtype", "'float32', 'float16', 'bfloat16'"),
    ({"dtype": "int4", "head_dim": 63}, "head_dim", "an even number"),
    ({"num_kv_heads": True}, "num_kv_heads", "an integer"),
])
def test_validation_messages(kw, field, fragment):
    with pytest.raises(ValueError) as err:
        schema(**kw)
    msg = str(err.value)
    assert msg.startswith(f"KVCacheSchema.{field}: got ")
    assert fragment in msg


def test_exact_message():
    with pytest.raises(ValueError) as err:
        schema(block_size=48)
    assert str(err.value) == (
        "KVCacheSchema.block_size: got 48; accepted: a positive power of two (1, 2, 4, ... 16, 32, 64)"
    )


def test_round_trip():
    s = schema(dtype="int4", v_head_dim=32, scale_dtype="bfloat16")
    assert KVCacheSchema.from_json(s.to_json()) == s
    assert KVCacheSchema.from_yaml(s.to_yaml()) == s
    assert s.to_dict() == {
        "num_layers": 2, "num_kv_heads": 4, "head_dim": 64, "block_size": 16, "dtype": "int4",
        "layout": "lmdeploy_paged", "v_head_dim": 32, "scale_dtype": "bfloat16",
    }


def test_tier_values():
    assert [t.value for t in KVTier] == ["device", "host", "ssd", "remote"]
    assert str(KVTier.HOST) == "host"
