"""LMDeploy's real Scheduler and BlockTrie without a model, for the prefix-trie plugin tests."""

from __future__ import annotations

from lmdeploy.pytorch.config import CacheConfig, SchedulerConfig
from lmdeploy.pytorch.messages import SequenceMeta
from lmdeploy.pytorch.paging.scheduler import Scheduler
from lmdeploy.pytorch.strategies.ar.sequence import ARSequenceStrategy


def bare_scheduler(block_size: int, num_blocks: int = 32) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_batches=8, max_session_len=256),
        CacheConfig(max_batches=8, block_size=block_size, num_cpu_blocks=0, num_gpu_blocks=num_blocks,
                    max_prefill_token_num=4096, enable_prefix_caching=True, device_type="cpu"),
        seq_meta=SequenceMeta(block_size, strategy=ARSequenceStrategy()),
    )
