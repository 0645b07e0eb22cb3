"""Approximate nearest-neighbour search over pooled video vectors (FAISS, inner product).

Vectors are L2-normalised, so inner product = cosine. The index type is chosen by size
(``choose_kind``): exact ``IndexFlatIP`` up to ``FLAT_MAX`` vectors (exact search over 50k x 512
floats is a few ms), HNSW (graph, no training) up to ``HNSW_MAX``, and IVF-Flat (k-means coarse
quantiser, trained on a sample) beyond. ``kind`` may be forced ("flat" | "hnsw" | "ivf").

Example::

    >>> import numpy as np
    >>> from video_retrieval.ann import build_ann, ann_search
    >>> x = np.random.default_rng(0).standard_normal((100, 16)).astype("float32")
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = build_ann(x)                       # flat (exact) at this size
    >>> scores, ids = ann_search(index, x[:2], k=3)
    >>> ids[:, 0].tolist()
    [0, 1]
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

FLAT_MAX = 50_000
HNSW_MAX = 2_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_NPROBE_FRACTION = 1 / 16


def _faiss():
    import faiss

    return faiss


def choose_kind(n: int) -> str:
    """Index type for ``n`` vectors."""
    if n <= FLAT_MAX:
        return "flat"
    if n <= HNSW_MAX:
        return "hnsw"
    return "ivf"


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: ~4 sqrt(n), at least 1, at most n / 39 (FAISS wants >= 39 per list)."""
    return int(max(1, min(4 * int(math.sqrt(n)), n // 39)))


def build_ann(
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int = 100_000,  # raised to 64 points per list when there are many lists
    seed: int = 0,
):
    """Build a FAISS inner-product index over ``vectors`` (float32 [N,D], row id = position)."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N,D], got {x.shape}")
    n, d = x.shape
    kind = choose_kind(n) if kind == "auto" else kind
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        nl = nlist or ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        # k-means wants >= 39 points per centroid (FAISS warns and clusters poorly below that)
        m = max(int(train_size), 64 * nl)
        sample = x if n <= m else x[np.sort(rng.choice(n, m, replace=False))]
        index.cp.seed = seed
        index.train(sample)
        index.nprobe = nprobe or max(1, int(round(nl * IVF_NPROBE_FRACTION)))
    else:
        raise ValueError(f"unknown ANN kind {kind!r} (auto, flat, hnsw, ivf)")
    if n:
        index.add(x)
    return index


def index_kind(index) -> str:
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def ann_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores [Q,k], ids [Q,k]); missing neighbours have id -1 (dropped by callers)."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = int(max(1, min(k, index.ntotal))) if index.ntotal else 1
    if index.ntotal == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    return index.search(q, k)


def save_ann(index, path: str | os.PathLike) -> None:
    """Write to a temporary name, then rename (a killed writer leaves the old file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _faiss().write_index(index, str(tmp))
    os.replace(tmp, path)


def load_ann(path: str | os.PathLike, ef_search: int = HNSW_EF_SEARCH, nprobe: int | None = None):
    faiss = _faiss()
    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search
    elif isinstance(index, faiss.IndexIVF) and nprobe:
        index.nprobe = nprobe
    return index
