import pytest
import torch

from sagellm.core.kv import KVCacheSchema
from sagellm.core.kv_backend import KVBlockKey

#: 2 layers x K,V x 4 tokens x 2 heads x 4 dims x 2 bytes = 256 bytes per block
SCHEMA = KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="float16")


def key(i: int, ns: str = "") -> KVBlockKey:
    return KVBlockKey(bytes([i]) * 16, ns)


def payload(i: int) -> bytes:
    return bytes((i * 7 + j) % 256 for j in range(SCHEMA.bytes_per_block()))


class Clock:
    def __init__(self, start: float = 1000.0):
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def schema():
    return SCHEMA


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(1)
