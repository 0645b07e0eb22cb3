"""The Milvus index of the videos collection, chosen by measured recall as ``ann_recall`` chooses
FAISS's: the asked kind (``auto``: exact up to ``ann.FLAT_MAX`` videos, HNSW beyond, Milvus's
own default family), recall@10 measured on a sample of the collection's own vectors (each
query's own row left out) and on ``--recall-captions``, against exact answers over every live
vector (what Milvus's FLAT search returns), and the smallest search parameter (HNSW ``ef``, IVF
``nprobe``) on ``ann_recall``'s ladder that reaches ``--target-recall``; exact search (FLAT)
when none does. The manifest's ``ann`` entry records it like FAISS's, with ``"engine":
"milvus"`` and the Milvus ``index_type``.

Recall is measured once Milvus has built the index over every row: a server reports the build's
progress (``describe_index``); Milvus Lite builds per segment in the background, so the writer
releases and reloads the collection, which builds the missing ones before it returns (readers of
a shared Lite server reload it themselves: ``milvus_read``).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.ann import (
    FLAT_MAX,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    format_bytes,
    ivf_nlist,
    memory_estimate,
)
from video_retrieval.index.ann_recall import (
    AnnOptions,
    _sample_info,
    ladder,
    measure_recall,
    recall_sample,
)
from video_retrieval.index.milvus import Calls, generation_filter, is_lite
from video_retrieval.index.milvus_read import search_params

#: ``--ann`` kinds a Milvus index offers, and their Milvus index types
MILVUS_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "ivf-sq8": "IVF_SQ8",
                "hnsw-sq8": "HNSW_SQ"}  # fmt: skip
#: seconds to wait for a server to build the index
BUILD_TIMEOUT_S = 3600.0


def check_kind(kind: str | None) -> None:
    if kind not in (None, "auto", *MILVUS_TYPES):
        raise UserError(
            f"--ann {kind} has no Milvus index type: with --store milvus choose auto, "
            f"{', '.join(MILVUS_TYPES)}"
        )


def build_params(kind: str, n: int, before: dict | None) -> dict:
    """Milvus build parameters of ``kind`` for ``n`` vectors; an IVF keeps its lists while the
    collection stays within a factor 2 of the size they were made for (no rebuild each run)."""
    if kind.startswith("hnsw"):
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind.startswith("ivf"):
        want = ivf_nlist(n)
        old = int(((before or {}).get("params") or {}).get("nlist", 0))
        if (before or {}).get("type") == kind and want / 2 <= old <= want * 2:
            return {"nlist": old}
        return {"nlist": want}
    return {}


def ensure_index(calls: Calls, name: str, index_type: str, params: dict, before: dict | None):
    """Give the collection's vectors this index (dropped and built again when it differs)."""
    now = calls("describe_index", name, "vector") or {}
    same_params = all(str(((before or {}).get("params") or {}).get(k)) == str(v)
                      for k, v in params.items())  # fmt: skip
    if now.get("index_type") == index_type and same_params:
        return False
    calls("release_collection", name)
    calls("drop_index", name, "vector")
    ip = calls("prepare_index_params")
    ip.add_index("vector", index_type=index_type, metric_type="COSINE", params=params)
    calls("create_index", name, ip)
    calls("load_collection", name)
    return True


def wait_built(calls: Calls, name: str) -> None:
    """Return once every row of ``name`` is in its index (module docstring)."""
    if is_lite(calls.target.uri):
        calls("release_collection", name)
        calls("load_collection", name)
        return
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while True:
        info = calls("describe_index", name, "vector") or {}
        if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
            info.get("total_rows", 0)
        ):
            return
        if time.monotonic() > deadline:
            raise UserError(f"{calls.target.shown()} did not finish building the index of {name}")
        time.sleep(1.0)


def live_vectors(calls: Calls, name: str, gen: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [N,D], ids [N]) of every row live in generation ``gen``."""
    it = calls("query_iterator", name, batch_size=4096, filter=generation_filter(gen),
               output_fields=["vector"])  # fmt: skip
    vecs, ids = [], []
    try:
        while batch := it.next():
            ids.extend(int(r["id"]) for r in batch)
            vecs.extend(r["vector"] for r in batch)
    finally:
        it.close()
    return np.asarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64)


def _searcher(calls: Calls, name: str, gen: int, ids: np.ndarray, index_type: str):
    row_of = {int(k): i for i, k in enumerate(ids)}
    state = {"params": {}}

    def search(q: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(q), k), -1, dtype=np.int64)
        if not len(q):
            return out
        ann = {"index_type": index_type, "params": state["params"]}
        res = calls("search", name, data=[v for v in q], limit=k, filter=generation_filter(gen),
                    search_params=search_params(ann, k))  # fmt: skip
        for j, hits in enumerate(res):
            found = [row_of[int(h["id"])] for h in hits if int(h["id"]) in row_of][:k]
            out[j, : len(found)] = found
        return out

    return search, state


def tune(calls: Calls, name: str, gen: int, n: int, dim: int, opts: AnnOptions, log=None,
         before: dict | None = None) -> dict:  # fmt: skip
    """Index the videos collection ``name`` for generation ``gen`` (``n`` live vectors) and
    return the manifest's ``ann`` entry (module docstring)."""
    opts = opts or AnnOptions()
    check_kind(opts.kind)
    target = float(opts.target_recall)
    kind, why = opts.kind, None
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "hnsw"
        why = f"{n} vectors: {'exact' if kind == 'flat' else 'HNSW'} (Milvus)"
    info = {"engine": "milvus", "target_recall": target, "requested": opts.kind}
    if why:
        info["chosen"] = why
    if kind == "flat" or n < 2:
        ensure_index(calls, name, "FLAT", {}, before)
        return {**info, "type": "flat", "index_type": "FLAT", "params": {}, "recall_at_10": 1.0,
                "sample": None, "memory_bytes": memory_estimate("flat", n, dim)}  # fmt: skip
    index_type = MILVUS_TYPES[kind]
    params = build_params(kind, n, before)
    ensure_index(calls, name, index_type, params, before)
    wait_built(calls, name)
    x, ids = live_vectors(calls, name, gen)
    rs = recall_sample(x, opts.sample, opts.text_queries, opts.seed)
    search, state = _searcher(calls, name, gen, ids, index_type)
    chosen, best = None, None
    for step in ladder(kind, SimpleNamespace(nlist=params.get("nlist", 1))):
        state["params"] = step
        r = measure_recall(None, x, rs, search=search)
        ok = [v for v in (r["video"], r["text"]) if v is not None]
        if best is None or r["all"] > best[1]["all"]:
            best = (step, r)
        if all(v >= target for v in ok) and r["all"] >= target:
            chosen = (step, r)
            break
    if chosen is None:
        step, r = best
        reason = (f"recall@10 {r['all']:.3f} < target {target:g} at "
                  f"{', '.join(f'{k} {v}' for k, v in step.items())}")  # fmt: skip
        ensure_index(calls, name, "FLAT", {}, {"type": kind, "params": params})
        need = memory_estimate("flat", n, dim)
        if log is not None:
            log(f"Milvus {index_type} does not reach the target recall: {reason}; searching "
                f"exactly (FLAT, {format_bytes(need)}) instead")  # fmt: skip
        return {**info, "type": "flat", "index_type": "FLAT", "params": {}, "recall_at_10": 1.0,
                "sample": _sample_info(rs, {"video": 1.0, "text": 1.0}), "memory_bytes": need,
                "fallback": {"type": kind, "params": {**params, **step},
                             "recall_at_10": round(r["all"], 4), "reason": reason}}  # fmt: skip
    step, r = chosen
    return {**info, "type": kind, "index_type": index_type, "params": {**params, **step},
            "recall_at_10": round(r["all"], 4), "sample": _sample_info(rs, r),
            "memory_bytes": memory_estimate(kind, n, dim)}  # fmt: skip
