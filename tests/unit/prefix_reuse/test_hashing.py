import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from sagellm.prefix_reuse import DIGEST_SIZE, PrefixNamespace, block_hashes, token_bytes

NS = PrefixNamespace(model="tiny-llama@v1", kv_dtype="float16", block_size=4)


def reference(tokens, bs, ns_bytes):
    """Independent re-implementation of the documented construction."""
    prev, out = bytes(16), []
    for start in range(0, len(tokens) - bs + 1, bs):
        data = prev + struct.pack(f"<{bs}i", *tokens[start : start + bs]) + ns_bytes
        prev = hashlib.blake2b(data, digest_size=16).digest()
        out.append(prev)
    return out


def test_matches_documented_construction_and_ignores_partial_block():
    tokens = list(range(100, 111))  # 11 tokens: 2 full blocks + 3
    hashes = block_hashes(tokens, 4, NS)
    assert len(hashes) == 2
    assert all(len(h) == DIGEST_SIZE for h in hashes)
    assert hashes == reference(tokens, 4, NS.to_bytes())
    assert block_hashes(tokens[:3], 4, NS) == []
    assert block_hashes([], 4, NS) == []


def test_chained_continuation_equals_full_hash():
    tokens = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    full = block_hashes(tokens, 4, NS)
    assert block_hashes(tokens[4:], 4, NS, parent=full[0]) == full[1:]
    # a block's hash depends on everything before it
    other = block_hashes([0] + tokens[1:], 4, NS)
    assert other[0] != full[0] and other[1] != full[1] and other[2] != full[2]


def test_namespace_separates_and_inputs_agree():
    tokens = list(range(8))
    base = block_hashes(tokens, 4, NS)
    assert block_hashes(tokens, 4, PrefixNamespace("tiny-llama@v1", adapter="lora-a", block_size=4)) != base
    assert block_hashes(tokens, 4, PrefixNamespace("tiny-llama@v1", kv_dtype="int8", block_size=4)) != base
    assert block_hashes(np.arange(8, dtype=np.int64), 4, NS) == base
    assert block_hashes(tokens, 4, NS.to_bytes()) == base
    assert token_bytes([1, 2]) == b"\x01\x00\x00\x00\x02\x00\x00\x00"


def test_invalid_inputs():
    with pytest.raises(ValueError, match="block_size 8"):
        block_hashes(list(range(8)), 8, NS)
    with pytest.raises(ValueError, match="int32"):
        block_hashes([2**31, 0, 0, 0], 4, NS)
    with pytest.raises(ValueError, match="integer"):
        block_hashes([0.5, 1.0, 2.0, 3.0], 4, NS)
    with pytest.raises(ValueError, match="power of two"):
        block_hashes([1, 2, 3], 3, NS.to_bytes())
    with pytest.raises(ValueError, match="kv_dtype"):
        PrefixNamespace("m", kv_dtype="float64")


def test_stable_across_processes_with_different_hash_seeds():
    code = (
        "from sagellm.prefix_reuse import PrefixNamespace, block_hashes; "
        "ns = PrefixNamespace(model='tiny-llama@v1', kv_dtype='float16', block_size=4); "
        "print(','.join(h.hex() for h in block_hashes(list(range(100, 111)), 4, ns))); "
        "print(hash(('random', (1, 2, 3))))"
    )
    outs = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.append(res.stdout.split())
    expected = ",".join(h.hex() for h in block_hashes(list(range(100, 111)), 4, NS))
    assert outs[0][0] == outs[1][0] == expected
    assert outs[0][1] != outs[1][1]  # LMDeploy-style salted keys do differ
