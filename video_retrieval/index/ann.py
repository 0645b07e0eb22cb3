"""Approximate nearest-neighbour search over pooled video vectors (FAISS, inner product): the
kinds, building, searching, saving and the manifest entry. Choosing the search parameters by
measured recall: ``ann_recall``.

Vectors are L2-normalised, so inner product = cosine. Kinds (``KINDS``):

* ``flat``: exact ``IndexFlatIP`` (4 bytes x D per vector).
* ``hnsw``: HNSW graph over the full vectors (no training; efSearch tunes recall vs speed).
* ``ivf``: IVF-Flat, a k-means coarse quantiser trained on a sample (nprobe tunes).
* compressed (``COMPRESSED``), whose top candidates are re-ranked exactly from the stored
  vectors (``pooled.npy``, memory-mapped, read only for the rows re-ranked):
  ``fp16`` / ``sq8`` (``IndexScalarQuantizer``, exhaustive, 2 / 1 bytes per dimension),
  ``hnsw-sq8`` (``IndexHNSWSQ``), ``ivf-sq8`` (``IndexIVFScalarQuantizer``) and ``ivf-pq``
  (``IndexIVFPQ``, D/8 bytes per vector).

Example::

    >>> import numpy as np
    >>> from video_retrieval.index.ann import build_ann, ann_search
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
import re

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path

KINDS = ("flat", "hnsw", "ivf", "fp16", "sq8", "hnsw-sq8", "ivf-sq8", "ivf-pq")


COMPRESSED = ("fp16", "sq8", "hnsw-sq8", "ivf-sq8", "ivf-pq")


FLAT_MAX = 50_000


HNSW_MAX = 2_000_000


HNSW_M = 32


HNSW_EF_CONSTRUCTION = 80


HNSW_EF_SEARCH = 128


IVF_NPROBE_FRACTION = 1 / 16


PQ_MIN_VECTORS = 1024  # 256 centroids per sub-quantiser, >= 4 training points each


def faiss_module():
    import faiss

    return faiss


def choose_kind(n: int) -> str:
    """``build_ann``'s own ``auto`` (by size only); ``vr index`` chooses with ``auto_kind``."""
    if n <= FLAT_MAX:
        return "flat"
    if n <= HNSW_MAX:
        return "hnsw"
    return "ivf"


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: ~4 sqrt(n), at least 1, at most n / 39 (FAISS wants >= 39 per list)."""
    return int(max(1, min(4 * int(math.sqrt(n)), n // 39)))


def pq_m(d: int) -> int:
    """PQ sub-quantisers: the largest divisor of ``d`` that is at most d / 8 (8 dims each)."""
    for m in range(max(1, d // 8), 0, -1):
        if d % m == 0:
            return m
    return 1


def memory_estimate(kind: str, n: int, d: int, hnsw_m: int = HNSW_M) -> int:
    """Bytes the FAISS index of ``kind`` holds in memory for ``n`` vectors of dimension ``d``
    (codes + graph links or list ids + centroids/codebooks). The stored vectors that compressed
    kinds re-rank from are memory-mapped from disk and not counted."""
    nlist = ivf_nlist(n) if n else 1
    links = int(2 * hnsw_m * 4 * 1.04)  # level 0 has 2M int32 links; upper levels ~ +1/M
    per = {
        "flat": 4 * d,
        "fp16": 2 * d,
        "sq8": d,
        "hnsw": 4 * d + links,
        "hnsw-sq8": d + links,
        "ivf": 4 * d + 8,
        "ivf-sq8": d + 8,
        "ivf-pq": pq_m(d) + 8,
    }[kind]
    extra = 0
    if kind.startswith("ivf"):
        extra += nlist * 4 * d
    if kind == "ivf-pq":
        extra += 256 * 4 * d
    return int(n * per + extra)


def auto_kind(n: int, d: int, max_memory: int | None = None) -> tuple[str, str]:
    """(kind, why) for ``n`` vectors of dimension ``d`` within ``max_memory`` bytes (None: half
    the machine's memory): exact search up to ``FLAT_MAX`` vectors, IVF beyond (measured on the
    structured 1M set, BENCHMARKS.md: IVF builds in half HNSW's time, searches faster and
    reaches the target at a smaller parameter); each replaced by a smaller kind when its index
    would not fit."""
    budget = default_memory_budget() if max_memory is None else int(max_memory)
    if n <= FLAT_MAX:
        prefs = ["flat", "fp16", "sq8"] + (["ivf-pq"] if n >= PQ_MIN_VECTORS else [])
    else:
        prefs = ["ivf", "ivf-sq8", "ivf-pq"]
    for kind in prefs:
        need = memory_estimate(kind, n, d)
        if need <= budget:
            return kind, f"{n} vectors, {format_bytes(need)} within {format_bytes(budget)}"
    kind = prefs[-1]
    need = memory_estimate(kind, n, d)
    return (
        kind,
        f"{n} vectors; the smallest index needs {format_bytes(need)} > {format_bytes(budget)}",
    )


def default_memory_budget() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text) -> int | None:
    """``--max-memory``: bytes from ``"4G"``, ``"512M"``, ``"1.5g"``, ``"200000000"``."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--max-memory {text!r}: give a size such as 512M, 4G or 2.5GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def train_rows(n: int, m: int, seed: int, holdout=None, need: int = 1) -> np.ndarray:
    """Rows a quantizer trains on: at most ``m`` of the ``n`` vectors, chosen at random, none of
    ``holdout`` (the recall queries: recall is then measured on vectors the quantizer never saw)
    unless fewer than ``need`` rows would be left (a small collection), then all rows."""
    rows = np.arange(n)
    if holdout is not None and len(holdout):
        kept = np.setdiff1d(rows, np.asarray(holdout, dtype=np.int64))
        rows = kept if len(kept) >= need else rows
    if len(rows) <= m:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, m, replace=False))


def _rows(rows: np.ndarray, record: list | None) -> np.ndarray:
    if record is not None:
        record.append(rows)
    return rows


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
    holdout=None,
    trained_on: list | None = None,
):
    """Build a FAISS inner-product index over ``vectors`` (float32 [N,D], row id = position).
    ``holdout``: rows kept out of the quantizers' training sample (``train_rows``);
    ``trained_on`` (a list) receives the rows they trained on (nothing for untrained kinds)."""
    faiss = faiss_module()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N,D], got {x.shape}")
    n, d = x.shape
    kind = choose_kind(n) if kind == "auto" else kind
    ip = faiss.METRIC_INNER_PRODUCT
    sq = faiss.ScalarQuantizer
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind in ("hnsw", "hnsw-sq8"):
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
        else:
            index = faiss.IndexHNSWSQ(d, sq.QT_8bit, hnsw_m, ip)
            index.train(x[_rows(train_rows(n, train_size, seed, holdout), trained_on)])
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind in ("fp16", "sq8"):
        index = faiss.IndexScalarQuantizer(d, sq.QT_fp16 if kind == "fp16" else sq.QT_8bit, ip)
        index.train(x[_rows(train_rows(n, train_size, seed, holdout), trained_on)])
    elif kind in ("ivf", "ivf-sq8", "ivf-pq"):
        if kind == "ivf-pq" and n < PQ_MIN_VECTORS:
            raise ValueError(f"ivf-pq needs at least {PQ_MIN_VECTORS} vectors to train, got {n}")
        # lists sized by the rows the coarse quantizer may train on (all but the held-out ones)
        kept = n - (len(holdout) if holdout is not None else 0)
        nl = nlist or ivf_nlist(kept if kept >= 39 else n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nl, ip)
        elif kind == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nl, sq.QT_8bit, ip)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, nl, pq_m(d), 8, ip)
        # k-means wants >= 39 points per centroid (FAISS warns and clusters poorly below that)
        m = max(int(train_size), 64 * nl, 64 * 256 if kind == "ivf-pq" else 0)
        index.cp.seed = seed
        if kind == "ivf-pq":
            index.pq.cp.seed = seed
            index.pq.cp.min_points_per_centroid = PQ_MIN_VECTORS // 256  # we checked n
        need = max(39 * nl, PQ_MIN_VECTORS if kind == "ivf-pq" else 0)
        index.train(x[_rows(train_rows(n, m, seed, holdout, need), trained_on)])
        index.nprobe = nprobe or max(1, int(round(nl * IVF_NPROBE_FRACTION)))
    else:
        raise ValueError(f"unknown ANN kind {kind!r} ({', '.join(('auto',) + KINDS)})")
    if n:
        for s in range(0, n, 200_000):  # bounded temporary memory inside FAISS
            index.add(x[s : s + 200_000])
    return index


def index_kind(index) -> str:
    """The kind of a FAISS index object (for indexes whose manifest names no kind)."""
    faiss = faiss_module()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        return "hnsw-sq8" if isinstance(storage, faiss.IndexScalarQuantizer) else "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivf-pq"
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return "ivf-sq8"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexScalarQuantizer):
        return "fp16" if index.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "sq8"
    return "flat"


def set_search_params(index, params: dict | None) -> None:
    """Apply recorded search parameters (``efSearch``, ``nprobe``) to a loaded index."""
    params = params or {}
    faiss = faiss_module()
    index = faiss.downcast_index(index) if type(index) is faiss.Index else index
    if "efSearch" in params and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params and isinstance(index, faiss.IndexIVF):
        index.nprobe = int(params["nprobe"])


def static_params(index, kind: str) -> dict:
    """Build-time parameters of ``index`` (recorded beside the tuned search parameter)."""
    if kind in ("hnsw", "hnsw-sq8"):
        return {
            "M": int(index.hnsw.nb_neighbors(1)),
            "efConstruction": int(index.hnsw.efConstruction),
        }
    if kind.startswith("ivf"):
        out = {"nlist": int(index.nlist)}
        if kind == "ivf-pq":
            out.update(pq_m=int(index.pq.M), pq_bits=int(index.pq.nbits))
        return out
    return {}


def ann_search(
    index, queries: np.ndarray, k: int, *, rerank_from=None, rerank: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores [Q,k], ids [Q,k]); missing neighbours have id -1 (dropped by callers).

    With ``rerank_from`` (the stored float vectors [N,D], e.g. a memory map), the index returns
    ``rerank * k`` candidates whose scores are then recomputed exactly from those vectors and
    re-sorted (the compressed kinds)."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if index.ntotal == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    k = int(max(1, min(k, index.ntotal)))
    if rerank_from is None:
        return index.search(q, k)
    kk = int(min(index.ntotal, max(k, k * max(1, int(rerank)))))
    _, ids = index.search(q, kk)
    return exact_rerank(rerank_from, q, ids, k)


def exact_rerank(vectors, queries: np.ndarray, ids: np.ndarray, k: int, chunk: int = 64):
    """Re-score candidate ``ids`` [Q,K] with the exact inner product against ``vectors`` rows
    (read once per distinct row, in row order) and keep the best ``k`` per query."""
    q_all = np.asarray(queries, np.float32)
    out_s = np.full((len(ids), k), -np.inf, np.float32)
    out_i = np.full((len(ids), k), -1, np.int64)
    for s in range(0, len(ids), chunk):
        cand = ids[s : s + chunk]
        valid = cand >= 0
        uniq, inv = np.unique(cand[valid], return_inverse=True)
        rows = np.asarray(vectors[uniq], dtype=np.float32) if len(uniq) else np.zeros((0, 1))
        scores = np.full(cand.shape, -np.inf, np.float32)
        if len(uniq):
            pos = np.nonzero(valid)
            scores[pos] = np.einsum("ij,ij->i", rows[inv], q_all[s : s + chunk][pos[0]])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(scores, order, 1)
        top_i = np.take_along_axis(cand, order, 1)
        top_i[~np.isfinite(top_s)] = -1
        out_s[s : s + len(cand), : top_s.shape[1]] = top_s
        out_i[s : s + len(cand), : top_i.shape[1]] = top_i
    return out_s, out_i


def save_ann(index, path: str | os.PathLike) -> None:
    """Write to a temporary name, then rename (a killed writer leaves the old file)."""
    with atomic_path(path) as tmp:
        faiss_module().write_index(index, str(tmp))


def load_ann(path: str | os.PathLike, ef_search: int = HNSW_EF_SEARCH, nprobe: int | None = None,
             params: dict | None = None):  # fmt: skip
    """Read an index; ``params`` (a manifest's tuned ``efSearch`` / ``nprobe``) win over the
    defaults of indexes from before recall was measured."""
    faiss = faiss_module()
    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search
    elif isinstance(index, faiss.IndexIVF) and nprobe:
        index.nprobe = nprobe
    set_search_params(index, params)
    return index


def describe(ann) -> dict:
    """The manifest's ``"ann"`` entry as a dict; indexes written before recall was measured
    record only the kind's name (``"flat"``, ``"hnsw"``, ``"ivf"``)."""
    if isinstance(ann, dict):
        return ann
    kind = str(ann or "flat")
    return {
        "type": kind,
        "params": {},
        "recall_at_10": 1.0 if kind == "flat" else None,
        "sample": None,
    }


def search_params(info: dict) -> tuple[dict, int]:
    """(FAISS search parameters, re-rank depth; 0 = no exact re-rank) of a manifest entry."""
    params = dict(info.get("params") or {})
    depth = int(params.get("rerank", 0)) if info.get("type") in COMPRESSED else 0
    if info.get("type") in COMPRESSED and not depth:
        depth = 1
    return params, depth


def summary_line(info: dict) -> str:
    """``hnsw (efSearch 48, recall@10 0.973 on 1000 sampled videos)`` for the CLI."""
    info = describe(info)
    kind = info["type"]
    p = info.get("params") or {}
    tuned = [f"{name} {p[name]}" for name in ("efSearch", "nprobe", "rerank") if name in p]
    parts = list(tuned)
    r = info.get("recall_at_10")
    s = info.get("sample") or {}
    if kind == "flat":
        parts.append("exact")
    elif r is not None:
        on = [f"{s[key]} {what}" for key, what in
              (("video_queries", "sampled videos"), ("text_queries", "captions")) if s.get(key)]  # fmt: skip
        parts.append(f"recall@10 {r:.3f}" + (f" on {' + '.join(on)}" if on else ""))
    line = kind + (f" ({', '.join(parts)})" if parts else "")
    if info.get("fallback"):
        fb = info["fallback"]
        line += f"; {fb['type']} missed the target ({fb.get('reason', '')})"
    return line
