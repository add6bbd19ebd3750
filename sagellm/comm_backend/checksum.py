"""Per-chunk checksums of transfer payloads (xxh3-64: ~25 GB/s on one CPU core).

A transfer is cut into chunks of ``chunk_bytes``; the owner of the bytes computes one checksum
per chunk when it stores them, and the receiver verifies each chunk after it landed. A chunk
that fails is fetched again; one that keeps failing fails the transfer
(:class:`ChecksumMismatch`), and the caller falls back (the PD decode engine recomputes).
"""

from __future__ import annotations

import xxhash


class TransferError(RuntimeError):
    """A transfer could not be completed (peer gone, protocol error, bad data)."""


class ChecksumMismatch(TransferError):
    """Chunks kept failing verification after every allowed re-send."""


def checksum(view) -> int:
    """xxh3-64 of a bytes-like object."""
    return xxhash.xxh3_64_intdigest(view)


def chunk_spans(nbytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each chunk of an ``nbytes`` payload; the last may be shorter."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes: got {chunk_bytes}; accepted: > 0")
    if nbytes <= 0:
        return []
    return [(start, min(chunk_bytes, nbytes - start)) for start in range(0, nbytes, chunk_bytes)]


def chunk_checksums(view, chunk_bytes: int) -> tuple[int, ...]:
    """One checksum per chunk of ``view`` (a bytes-like object)."""
    data = memoryview(view).cast("B")
    return tuple(checksum(data[start : start + length]) for start, length in chunk_spans(len(data), chunk_bytes))
