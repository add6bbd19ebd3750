"""Lookups and explicit eviction shared by the host and SSD tiers.

Both keep ``self._entries`` (key -> entry), ``self._lock`` and hit/miss counters; they differ only
in when an entry counts as published and in what dropping one means (free a slot, delete a file).
"""

from __future__ import annotations

from collections.abc import Sequence

from sagellm.core.kv_backend import EvictResult, KVBlockKey


class PublishedBlocks:
    """Mixin: ``contains`` (leading published blocks) and ``evict`` over ``_entries``."""

    def _is_published(self, entry) -> bool:
        raise NotImplementedError

    def _drop_evicted(self, entry) -> None:
        raise NotImplementedError

    def _leading(self, keys: Sequence[KVBlockKey]) -> int:
        n = 0
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or not self._is_published(entry):
                break
            n += 1
        return n

    def contains(self, keys: Sequence[KVBlockKey]) -> int:
        with self._lock:
            n = self._leading(keys)
            self._hits += n
            self._misses += len(keys) - n
            return n

    def evict(self, keys: Sequence[KVBlockKey]) -> EvictResult:
        """Drop the given blocks; pinned, reserved or in-flight ones stay and are reported."""
        evicted, missing, pinned = [], [], []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    missing.append(key)
                elif entry.pins or not self._is_published(entry):
                    pinned.append(key)
                else:
                    self._drop_evicted(entry)
                    evicted.append(key)
        return EvictResult(tuple(evicted), tuple(missing), tuple(pinned))
