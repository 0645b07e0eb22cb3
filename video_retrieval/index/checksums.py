"""Sizes and checksums of the files an index consists of, and their verification.

Every file a generation or a shard consists of is recorded as ``{"bytes": N, "blake2b": HEX}``
(128-bit BLAKE2b of its content, about 1 GB/s on one core): the generation's files in the
manifest's ``checksums``, the shards' files in their journal lines (the source of truth) and in
the generation's ``checksums.<gen>.json`` (what readers use). Opening checks sizes always and
hashes the files up to ``HASH_ON_OPEN_BYTES`` (larger ones only under ``vr index --verify``, or
when repair takes a shard); ``mismatch`` says why a file does not match (the caller raises
``files.IndexDamaged`` naming it).

Indexes written before checksums existed have no records; their files are not checked (the next
``vr index`` run records them).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

DIGEST = "blake2b"
#: files up to this size are hashed whenever they are opened; larger ones only on --verify
HASH_ON_OPEN_BYTES = 64 << 20


def _hasher():
    return hashlib.blake2b(digest_size=16)


def digest_bytes(data: bytes) -> dict:
    h = _hasher()
    h.update(data)
    return {"bytes": len(data), DIGEST: h.hexdigest()}


def digest_file(path: str | Path, chunk: int = 1 << 22) -> dict:
    h, n = _hasher(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return {"bytes": n, DIGEST: h.hexdigest()}


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file content of ``array`` (so that it is hashed as it is written)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


def mismatch(path: Path, record: dict | None, full: bool = False) -> str | None:
    """Why ``path`` does not match ``record`` (missing, another size, or, when ``full`` or when
    it is small enough to hash on open, another checksum), or None when it matches. No record:
    nothing to check against (an index written before checksums)."""
    if not record:
        return None
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != record.get("bytes"):
        return (
            f"has {size} bytes where the index recorded {record.get('bytes')} (truncated or "
            "overwritten)"
        )
    if (full or size <= HASH_ON_OPEN_BYTES) and DIGEST in record:
        if digest_file(path)[DIGEST] != record[DIGEST]:
            return "does not match the checksum the index recorded (corrupt)"
    return None
