"""The ANN's search parameters chosen by measured recall.

``build_measured`` builds the asked kind (``auto``: by collection size and memory budget,
``ann.auto_kind``), measures recall@10 against exact search on a sample of the collection's own
vectors (each query's own vector excluded) and on text queries when given, and tunes the search
parameter to the smallest value on its ladder reaching the target recall: efSearch / nprobe
first (with the deepest re-rank of compressed kinds, so their codes' error does not hide what the
parameter gives), then the smallest re-rank depth that still reaches it. If no value does, it
says so and returns an exact index instead. The description it returns is the manifest's
``"ann"`` entry::

    {"type": "hnsw", "params": {"M": 32, "efConstruction": 80, "efSearch": 48},
     "recall_at_10": 0.973, "target_recall": 0.95,
     "sample": {"video_queries": 1000, "text_queries": 0, "k": 10, ...}, ...}

Recall counts a returned neighbour as correct when its exact cosine is at least the exact k-th
best cosine (minus 1e-5), so ties between equal vectors do not count as misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.ann import (
    KINDS,
    PQ_MIN_VECTORS,
    ann_search,
    auto_kind,
    build_ann,
    faiss_module,
    format_bytes,
    memory_estimate,
    set_search_params,
    static_params,
)

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
    """Queries and their exact answers: a random sample of the collection's own vectors (each
    query's own row excluded from its answers, and the sample kept out of the quantizers'
    training) and text queries; ``threshold`` is each query's exact k-th best cosine."""

    queries: np.ndarray  # [Q, D]
    self_ids: np.ndarray  # [Q] the query's own row, -1 for text queries
    k: np.ndarray  # [Q] neighbours asked (min(10, rows other than itself))
    threshold: np.ndarray  # [Q]
    n_video: int
    n_text: int
    #: share of the video queries in the quantizers' training sample (None: nothing trained)
    in_training: float | None = None


def recall_sample(x: np.ndarray, sample: int, text_queries=None, seed: int = 0) -> RecallSample:
    faiss = faiss_module()
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


def measure_recall(index, x: np.ndarray, rs: RecallSample, rerank: int = 0, search=None) -> dict:
    """Recall@k of ``index`` (as searched with its current parameters) on the sample:
    ``{"all", "video", "text"}`` (None where there were no such queries). ``search(q, k)``
    (rows [Q,k], -1 = none) replaces the FAISS search: another engine's (``milvus_ann``)."""
    if not len(rs.queries):
        return {"all": 1.0, "video": None, "text": None}

    def faiss_search(q, k):  # as vr search asks: k results (+1 for a video query's own row)
        if not len(q):
            return np.zeros((0, k), np.int64)
        if rerank:
            return ann_search(index, q, k, rerank_from=x, rerank=rerank)[1]
        return ann_search(index, q, k)[1]

    if search is None:
        search = faiss_search

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
        "queries_in_training": None if rs.in_training is None else round(rs.in_training, 4),
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
    holdout = rs.self_ids[rs.self_ids >= 0]
    trained: list = []
    index = build_ann(x, kind, seed=options.seed, holdout=holdout, trained_on=trained)
    if trained and len(holdout):  # share of the video queries the quantizer trained on
        rs.in_training = float(np.isin(holdout, trained[0]).mean())
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
