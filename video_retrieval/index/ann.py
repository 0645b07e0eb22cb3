"""Approximate nearest-neighbour search over pooled video vectors (FAISS, inner product), with
recall measured on the collection itself.

Vectors are L2-normalised, so inner product = cosine. Kinds (``KINDS``):

* ``flat``: exact ``IndexFlatIP`` (4 bytes x D per vector).
* ``hnsw``: HNSW graph over the full vectors (no training; efSearch tunes recall vs speed).
* ``ivf``: IVF-Flat, a k-means coarse quantiser trained on a sample (nprobe tunes).
* compressed (``COMPRESSED``), whose top candidates are re-ranked exactly from the stored
  vectors (``pooled.npy``, memory-mapped, read only for the rows re-ranked):
  ``fp16`` / ``sq8`` (``IndexScalarQuantizer``, exhaustive, 2 / 1 bytes per dimension),
  ``hnsw-sq8`` (``IndexHNSWSQ``), ``ivf-sq8`` (``IndexIVFScalarQuantizer``) and ``ivf-pq``
  (``IndexIVFPQ``, D/8 bytes per vector).

``build_measured`` builds the asked kind (``auto``: by collection size and memory budget,
``auto_kind``), measures recall@10 against exact search on a sample of the collection's own
vectors (each query's own vector excluded: held-out video queries) and on text queries when
given, and tunes the search parameter to the smallest value on its ladder reaching the target
recall: efSearch / nprobe first (with the deepest re-rank of compressed kinds, so their codes'
error does not hide what the parameter gives), then the smallest re-rank depth that still
reaches it. If no value does, it says so and returns an exact index instead. The description
it returns is the manifest's ``"ann"`` entry::

    {"type": "hnsw", "params": {"M": 32, "efConstruction": 80, "efSearch": 48},
     "recall_at_10": 0.973, "target_recall": 0.95,
     "sample": {"video_queries": 1000, "text_queries": 0, "k": 10, ...}, ...}

Recall counts a returned neighbour as correct when its exact cosine is at least the exact k-th
best cosine (minus 1e-5), so ties between equal vectors do not count as misses.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from video_retrieval.atomic import atomic_path
from video_retrieval.errors import UserError

KINDS = ("flat", "hnsw", "ivf", "fp16", "sq8", "hnsw-sq8", "ivf-sq8", "ivf-pq")
COMPRESSED = ("fp16", "sq8", "hnsw-sq8", "ivf-sq8", "ivf-pq")
FLAT_MAX = 50_000
HNSW_MAX = 2_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_NPROBE_FRACTION = 1 / 16
PQ_MIN_VECTORS = 1024  # 256 centroids per sub-quantiser, >= 4 training points each

DEFAULT_TARGET_RECALL = 0.95
RECALL_K = 10
RECALL_SAMPLE = 1000
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: re-rank depths (x k candidates re-scored exactly) tried for each compressed kind
RERANK_LADDERS = {
    "fp16": (1, 2, 4, 8, 16),
    "sq8": (1, 2, 4, 8, 16),
    "hnsw-sq8": (1, 2, 4, 8, 16),
    "ivf-sq8": (1, 2, 4, 8, 16),
    "ivf-pq": (1, 2, 4, 8, 16, 32, 64),
}
TIE_EPS = 1e-5


def _faiss():
    import faiss

    return faiss


# -- choosing a kind ---------------------------------------------------------------------------
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


# -- building ------------------------------------------------------------------------------------
def _train_sample(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    n = len(x)
    if n <= m:
        return x
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(x[np.sort(rng.choice(n, m, replace=False))])


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
    ip = faiss.METRIC_INNER_PRODUCT
    sq = faiss.ScalarQuantizer
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind in ("hnsw", "hnsw-sq8"):
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
        else:
            index = faiss.IndexHNSWSQ(d, sq.QT_8bit, hnsw_m, ip)
            index.train(_train_sample(x, train_size, seed))
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind in ("fp16", "sq8"):
        index = faiss.IndexScalarQuantizer(d, sq.QT_fp16 if kind == "fp16" else sq.QT_8bit, ip)
        index.train(_train_sample(x, train_size, seed))
    elif kind in ("ivf", "ivf-sq8", "ivf-pq"):
        if kind == "ivf-pq" and n < PQ_MIN_VECTORS:
            raise ValueError(f"ivf-pq needs at least {PQ_MIN_VECTORS} vectors to train, got {n}")
        nl = nlist or ivf_nlist(n)
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
        index.train(_train_sample(x, m, seed))
        index.nprobe = nprobe or max(1, int(round(nl * IVF_NPROBE_FRACTION)))
    else:
        raise ValueError(f"unknown ANN kind {kind!r} ({', '.join(('auto',) + KINDS)})")
    if n:
        for s in range(0, n, 200_000):  # bounded temporary memory inside FAISS
            index.add(x[s : s + 200_000])
    return index


def index_kind(index) -> str:
    """The kind of a FAISS index object (for indexes whose manifest names no kind)."""
    faiss = _faiss()
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
    faiss = _faiss()
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


# -- searching -----------------------------------------------------------------------------------
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
        _faiss().write_index(index, str(tmp))


def load_ann(path: str | os.PathLike, ef_search: int = HNSW_EF_SEARCH, nprobe: int | None = None,
             params: dict | None = None):  # fmt: skip
    """Read an index; ``params`` (a manifest's tuned ``efSearch`` / ``nprobe``) win over the
    defaults of indexes from before recall was measured."""
    faiss = _faiss()
    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search
    elif isinstance(index, faiss.IndexIVF) and nprobe:
        index.nprobe = nprobe
    set_search_params(index, params)
    return index


# -- the manifest entry --------------------------------------------------------------------------
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
    """``hnsw (efSearch 48, recall@10 0.973 on 1000 held-out videos)`` for the CLI."""
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
              (("video_queries", "held-out videos"), ("text_queries", "captions")) if s.get(key)]  # fmt: skip
        parts.append(f"recall@10 {r:.3f}" + (f" on {' + '.join(on)}" if on else ""))
    line = kind + (f" ({', '.join(parts)})" if parts else "")
    if info.get("fallback"):
        fb = info["fallback"]
        line += f"; {fb['type']} missed the target ({fb.get('reason', '')})"
    return line


# -- recall --------------------------------------------------------------------------------------
@dataclass
class AnnOptions:
    """How ``vr index`` builds the ANN (``--ann``, ``--target-recall``, ``--max-memory``,
    ``--recall-captions`` as ``text_queries``, the held-out ``sample`` size)."""

    kind: str = "auto"
    target_recall: float = DEFAULT_TARGET_RECALL
    max_memory: int | None = None
    sample: int = RECALL_SAMPLE
    text_queries: np.ndarray | None = field(default=None, repr=False)
    seed: int = 0

    def check(self) -> None:
        if self.kind != "auto" and self.kind not in KINDS:
            raise UserError(f"--ann {self.kind!r}: choose one of auto, {', '.join(KINDS)}")
        if not 0.0 < float(self.target_recall) <= 1.0:
            raise UserError(f"--target-recall must be in (0, 1], got {self.target_recall}")
        if int(self.sample) < 1:
            raise UserError(f"--recall-sample must be >= 1, got {self.sample}")


@dataclass
class RecallSample:
    """Queries and their exact answers: held-out collection vectors (own row excluded) and text
    queries; ``threshold`` is each query's exact k-th best cosine."""

    queries: np.ndarray  # [Q, D]
    self_ids: np.ndarray  # [Q] the query's own row, -1 for text queries
    k: np.ndarray  # [Q] neighbours asked (min(10, rows other than itself))
    threshold: np.ndarray  # [Q]
    n_video: int
    n_text: int


def recall_sample(x: np.ndarray, sample: int, text_queries=None, seed: int = 0) -> RecallSample:
    faiss = _faiss()
    n, d = x.shape
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(n, min(int(sample), n), replace=False)) if n >= 2 else np.zeros(0, int)
    qv = np.ascontiguousarray(x[ids], np.float32)
    qt = np.zeros((0, d), np.float32)
    if text_queries is not None and len(text_queries) and n:
        qt = np.asarray(text_queries, np.float32).reshape(-1, d)
        qt = qt / (np.linalg.norm(qt, axis=1, keepdims=True) + 1e-12)
    kv, kt = min(RECALL_K, n - 1), min(RECALL_K, n)
    thr = []
    if len(qv):
        s, i = faiss.knn(qv, x, kv + 1, metric=faiss.METRIC_INNER_PRODUCT)
        for row, own in enumerate(ids):
            keep = i[row] != own
            if keep.all():  # its own row tied with an equal vector outside the top: drop the last
                keep[-1] = False
            thr.append(s[row][keep][kv - 1])
    if len(qt):
        s, _ = faiss.knn(np.ascontiguousarray(qt), x, kt, metric=faiss.METRIC_INNER_PRODUCT)
        thr.extend(s[:, kt - 1])
    return RecallSample(
        queries=np.concatenate([qv, qt]).astype(np.float32),
        self_ids=np.concatenate([ids, np.full(len(qt), -1)]).astype(np.int64),
        k=np.concatenate([np.full(len(qv), kv), np.full(len(qt), kt)]).astype(np.int64),
        threshold=np.asarray(thr, np.float32),
        n_video=len(qv),
        n_text=len(qt),
    )


def measure_recall(index, x: np.ndarray, rs: RecallSample, rerank: int = 0) -> dict:
    """Recall@k of ``index`` (as searched with its current parameters) on the sample:
    ``{"all", "video", "text"}`` (None where there were no such queries)."""
    if not len(rs.queries):
        return {"all": 1.0, "video": None, "text": None}

    def search(q, k):  # as vr search asks: k results (+1 for a video query's own row)
        if not len(q):
            return np.zeros((0, k), np.int64)
        if rerank:
            return ann_search(index, q, k, rerank_from=x, rerank=rerank)[1]
        return ann_search(index, q, k)[1]

    nv = rs.n_video
    kv = int(rs.k[0]) + 1 if nv else 1
    kt = int(rs.k[nv]) if rs.n_text else 1
    found = [*search(rs.queries[:nv], kv), *search(rs.queries[nv:], kt)]
    hits = np.zeros(len(rs.queries))
    for j, ids in enumerate(found):
        got = ids[ids >= 0]
        got = got[got != rs.self_ids[j]][: rs.k[j]]
        exact = x[got] @ rs.queries[j] if len(got) else np.zeros(0)
        hits[j] = np.count_nonzero(exact >= rs.threshold[j] - TIE_EPS) / max(1, rs.k[j])
    v, t = hits[: rs.n_video], hits[rs.n_video :]
    return {
        "all": float(hits.mean()),
        "video": float(v.mean()) if len(v) else None,
        "text": float(t.mean()) if len(t) else None,
    }


def ladder(kind: str, index) -> list[dict]:
    """Settings of the search parameter of ``kind`` (efSearch / nprobe), cheapest first; ``[{}]``
    for kinds without one. IVF stops at a quarter of the lists (beyond that exact search is
    about as cheap)."""
    if kind in ("hnsw", "hnsw-sq8"):
        return [{"efSearch": e} for e in EF_LADDER]
    if kind.startswith("ivf"):
        nl = int(index.nlist)
        cap = nl if nl < 8 else max(1, nl // 4)
        values, v = [], 1
        while v < cap:
            values.append(v)
            v = v + 1 if v < 4 else int(math.ceil(v * 1.5))
        return [{"nprobe": p} for p in [*values, cap]]
    return [{}]


def rerank_ladder(kind: str) -> tuple[int, ...]:
    """Re-rank depths of a compressed kind, smallest first (empty for the others)."""
    return RERANK_LADDERS.get(kind, ())


def _exact_info(n: int, d: int, rs: RecallSample | None, target: float, requested: str) -> dict:
    return {
        "type": "flat",
        "params": {},
        "recall_at_10": 1.0,
        "target_recall": target,
        "sample": None if rs is None else _sample_info(rs, {"video": 1.0, "text": 1.0}),
        "memory_bytes": memory_estimate("flat", n, d),
        "requested": requested,
    }


def _sample_info(rs: RecallSample, r: dict) -> dict:
    return {
        "video_queries": rs.n_video,
        "text_queries": rs.n_text,
        "k": int(rs.k[0]) if len(rs.k) else RECALL_K,  # 10, or fewer in a tiny collection
        "recall_video": None if not rs.n_video else round(r["video"], 4),
        "recall_text": None if not rs.n_text else round(r["text"], 4),
    }


def build_measured(
    vectors: np.ndarray, options: AnnOptions | None = None, log: Callable[[str], None] | None = None
):
    """Build the index ``options`` ask for, measure and tune its recall; returns
    ``(faiss index, manifest entry)``. When the target is out of reach the index is exact
    (``flat``) and ``log`` gets one line saying so."""
    options = options or AnnOptions()
    options.check()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    target = float(options.target_recall)
    requested, why = options.kind, None
    kind = options.kind
    if kind == "auto":
        kind, why = auto_kind(n, d, options.max_memory)
    if kind == "flat":
        info = _exact_info(n, d, None, target, requested)
        if why:
            info["chosen"] = why
        return build_ann(x, "flat"), info
    rs = recall_sample(x, options.sample, options.text_queries, options.seed)
    if kind == "ivf-pq" and n < PQ_MIN_VECTORS:
        reason = f"{n} vectors are too few to train its codebooks (needs {PQ_MIN_VECTORS})"
        return _fallback(x, rs, target, requested, {"type": kind, "reason": reason}, log)
    index = build_ann(x, kind, seed=options.seed)
    depths = rerank_ladder(kind)
    deepest = {"rerank": depths[-1]} if depths else {}

    def measure(step):
        set_search_params(index, step)
        r = measure_recall(index, x, rs, step.get("rerank", 0))
        ok = [v for v in (r["video"], r["text"]) if v is not None]
        return r, all(v >= target for v in ok) and r["all"] >= target

    # 1. the smallest efSearch / nprobe that reaches the target with the deepest re-rank (so
    # the codes' error does not hide what the search parameter gives), 2. the smallest re-rank
    # depth that still reaches it with that parameter
    best, chosen = None, None
    for step in ladder(kind, index):
        step = {**step, **deepest}
        r, ok = measure(step)
        if best is None or r["all"] > best[1]["all"]:
            best = (step, r)
        if ok:
            chosen = (step, r)
            break
    if chosen is None:
        step, r = best
        reason = (f"recall@10 {r['all']:.3f} < target {target:g} at "
                  f"{', '.join(f'{k_} {v}' for k_, v in step.items())}")  # fmt: skip
        failed = {"type": kind, "params": {**static_params(index, kind), **step},
                  "recall_at_10": round(r["all"], 4), "reason": reason}  # fmt: skip
        del index
        return _fallback(x, rs, target, requested, failed, log)
    for depth in depths[:-1]:
        step = {**chosen[0], "rerank": depth}
        r, ok = measure(step)
        if ok:
            chosen = (step, r)
            break
    step, r = chosen
    set_search_params(index, step)
    info = {
        "type": kind,
        "params": {**static_params(index, kind), **step},
        "recall_at_10": round(r["all"], 4),
        "target_recall": target,
        "sample": _sample_info(rs, r),
        "memory_bytes": memory_estimate(kind, n, d),
        "requested": requested,
    }
    if why:
        info["chosen"] = why
    return index, info


def _fallback(x, rs, target, requested, failed: dict, log):
    n, d = x.shape
    info = _exact_info(n, d, rs, target, requested)
    info["fallback"] = failed
    need = memory_estimate("flat", n, d)
    if log is not None:
        log(
            f"{failed['type']} does not reach the target recall: {failed['reason']}; "
            f"searching exactly (flat, {format_bytes(need)}) instead"
        )
    return build_ann(x, "flat"), info
