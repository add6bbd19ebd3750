import pytest
import torch

from sagellm.core.kv import KVCacheSchema
from sagellm.kv_runtime import block_layout, pack_block, schema_fingerprint, typed_views, unpack_block


def random_block(schema):
    g = torch.Generator().manual_seed(0)
    out = []
    for spec in block_layout(schema):
        if spec.dtype == torch.uint8:
            out.append(torch.randint(0, 256, spec.shape, dtype=torch.uint8, generator=g))
        else:
            out.append(torch.randn(spec.shape, generator=g).to(spec.dtype))
    return out


@pytest.mark.parametrize(
    "dtype,expected",
    [("float16", 256), ("bfloat16", 256), ("float32", 512), ("fp8_e4m3", 128), ("int8", 256), ("int4", 192)],
)
def test_layout_covers_schema_bytes_and_round_trips(dtype, expected):
    schema = KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype=dtype)
    specs = block_layout(schema)
    assert sum(s.nbytes for s in specs) == schema.bytes_per_block() == expected
    assert [s.offset for s in specs] == [sum(x.nbytes for x in specs[:i]) for i in range(len(specs))]
    tensors = random_block(schema)
    data = pack_block(schema, tensors)
    assert len(data) == expected
    back = unpack_block(schema, data)
    assert all(a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(tensors, back))


def test_layout_names_and_shapes():
    schema = KVCacheSchema(num_layers=1, num_kv_heads=2, head_dim=8, block_size=4, dtype="int4", scale_dtype="float32")
    assert [(s.name, s.shape, s.dtype) for s in block_layout(schema)] == [
        ("k", (4, 2, 4), torch.uint8),
        ("v", (4, 2, 4), torch.uint8),
        ("k_scale_zero", (4, 2, 2), torch.float32),
        ("v_scale_zero", (4, 2, 2), torch.float32),
    ]


def test_pack_rejects_wrong_tensors_and_views_write_through():
    schema = KVCacheSchema(num_layers=1, num_kv_heads=1, head_dim=2, block_size=2, dtype="float32")
    with pytest.raises(ValueError, match="2 tensors"):
        pack_block(schema, [torch.zeros(2, 1, 2)])
    with pytest.raises(ValueError, match="layer 0 v"):
        pack_block(schema, [torch.zeros(2, 1, 2), torch.zeros(2, 1, 2, dtype=torch.float16)])
    flat = torch.zeros(schema.bytes_per_block(), dtype=torch.uint8)
    k, v = typed_views(schema, flat, in_place=True)
    v.fill_(1.0)
    assert unpack_block(schema, flat)[1].sum().item() == 4.0
    misaligned = torch.zeros(schema.bytes_per_block() + 1, dtype=torch.uint8)[1:]
    with pytest.raises(ValueError, match="multiple of 4"):
        typed_views(schema, misaligned, in_place=True)
    assert len(typed_views(schema, misaligned)) == 2  # copies instead


def test_fingerprint_depends_on_layout():
    a = KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4)
    assert schema_fingerprint(a) == schema_fingerprint(KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4))
    assert schema_fingerprint(a) != schema_fingerprint(KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=8))
    assert schema_fingerprint(a) != schema_fingerprint(
        KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="bfloat16")
    )
    assert len(schema_fingerprint(a)) == 8


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_stacked_pack_equals_pack_block_and_unpacks_into_cache_views(dtype):
    from sagellm.kv_runtime.layout import pack_stacked, stacked_shape, unpack_stacked

    schema = KVCacheSchema(num_layers=3, num_kv_heads=2, head_dim=4, block_size=4, dtype=dtype)
    assert stacked_shape(schema) == (3, 2, 4, 2, 4)
    g = torch.Generator().manual_seed(1)
    # [layers, blocks, block_size, heads, dim], as LMDeploy's cache engine lays out K and V
    keys = torch.randn(3, 5, 4, 2, 4, generator=g).to(getattr(torch, dtype))
    values = torch.randn(3, 5, 4, 2, 4, generator=g).to(getattr(torch, dtype))
    per_tensor = [t for layer in range(3) for t in (keys[layer, 2], values[layer, 2])]
    data = pack_stacked(schema, keys[:, 2], values[:, 2])
    assert data == pack_block(schema, per_tensor)
    unpack_stacked(schema, data, keys[:, 4], values[:, 4])
    assert torch.equal(keys[:, 4], keys[:, 2]) and torch.equal(values[:, 4], values[:, 2])


def test_stacked_layout_only_for_unscaled_kv_of_one_shape():
    from sagellm.kv_runtime.layout import pack_stacked, stacked_shape

    for schema in (KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="int8"),
                   KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="int4"),
                   KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="float16", v_head_dim=8)):
        assert stacked_shape(schema) is None
        with pytest.raises(ValueError, match="unscaled schema"):
            pack_stacked(schema, torch.zeros(2, 4, 2, 4), torch.zeros(2, 4, 2, 4))
