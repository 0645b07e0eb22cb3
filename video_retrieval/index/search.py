"""Two-stage search over an index: ANN over pooled vectors, then rerank from frame features.

Stage 1: the query's sentence embedding (through the pooling aggregator's ``embed_text``,
L2-normalised) against the pooled video vectors with FAISS; the top ``candidates`` come with a
*base score* = cosine(query, pooled vector) in [-1, 1].
Stage 2: a reranker (``rerank.build_reranker``) rescores those candidates from their stored
frame embeddings; ``none`` keeps the base score. Every hit also gets its best-matching moment
(``rerank.best_moment`` over per-frame cosine similarities) and a thumbnail timestamp.

The default reranker (``auto``, ``default_rerank``) follows the measurements in BENCHMARKS.md
("Partial relevance: which reranker helps"): on short videos that a caption describes as a whole,
every frame-level reranker lowered R@1 of both a mean-pooled and a seqTransf index (CLIPRerank's
max-over-frames term and query scoring are order-blind), so the default is none; on long videos
of which a caption describes one part (median duration >= ``LONG_VIDEO_S``), CLIP-Hitchhiker's
query scoring over every stored frame helped both most, so it is the default there. With
``rerank_model`` (CLIPRerank's own frame encoder) the default is CLIPRerank.
"""

from __future__ import annotations

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.hits import Hit, make_hit
from video_retrieval.index.queries import check_queries, encode_query
from video_retrieval.index.rerank import (
    QueryFeatures,
    best_moment,
    build_reranker,
    frame_similarities,
)
from video_retrieval.index.store import IndexStore
from video_retrieval.limits import check, check_query
from video_retrieval.schemas import SearchResult

#: an index whose median video is at least this long (seconds) holds "long videos": the
#: partial-relevance setting (the synthetic split is 30-120 s; MSR-VTT clips are 10-30 s)
LONG_VIDEO_S = 30.0


def median_duration(index: IndexStore) -> float:
    """Median duration (s) of the indexed videos (0 for an empty index), computed once."""
    key = ("_median_duration", len(index))
    got = index.__dict__.get("_median_cache")
    if got is None or got[0] != key:
        d = [float(v.get("duration") or 0.0) for v in index.videos]
        got = (key, float(np.median(d)) if d else 0.0)
        index.__dict__["_median_cache"] = got
    return got[1]


def default_rerank(index: IndexStore, rerank_model: str | None = None) -> str:
    """The reranker ``auto`` stands for (module docstring): ``cliprerank`` when a separate frame
    encoder (``rerank_model``) is given; ``query_scored`` (CLIP-Hitchhiker, zero-shot over every
    stored frame) when the index holds long videos (median duration >= ``LONG_VIDEO_S``);
    ``none`` otherwise."""
    if rerank_model is not None:
        return "cliprerank"
    return "query_scored" if median_duration(index) >= LONG_VIDEO_S else "none"


def resolve_rerank(index: IndexStore, rerank: str | None, rerank_model: str | None = None) -> str:
    """``rerank`` with ``auto`` (and None) replaced by ``default_rerank``."""
    if rerank is None or rerank == "auto":
        return default_rerank(index, rerank_model)
    return rerank


def get_reranker(
    index: IndexStore, rerank: str | None, alpha: float, rerank_model: str | None = None
):
    rerank = resolve_rerank(index, rerank, rerank_model)
    cache = index.__dict__.setdefault("_rerankers", {})
    key = (rerank, float(alpha), rerank_model)
    if key not in cache:
        cache[key] = build_reranker(
            rerank,
            index.embed_dim,
            alpha=alpha,
            index_fingerprint=index.fingerprint["encoder"],
            patch_topk=index.patch_topk,
            rerank_model=rerank_model,
        )
    return cache[key]


def rerank_scores(
    index: IndexStore, reranker, q: QueryFeatures, base, rows, frames=None
) -> np.ndarray:
    """Stage-2 scores of the candidate ``rows`` (base scores ``base``; ``frames``: their stored
    frame embeddings when the caller has them). A CLIPRerank with its own frame model
    (``--rerank-model``) encodes the query and the candidates' frames with that model."""
    fm = getattr(reranker, "frame_model", None)
    if fm is not None:
        qm = fm.embed_query(q.text)
        scores = reranker.score(qm, base, [fm.frames(index, int(r)) for r in rows])
        return np.asarray(scores, dtype=np.float64)
    if frames is None:
        frames = [index.frames(int(r))[0] for r in rows]
    patches = [index.patches(int(r)) for r in rows] if reranker.needs_patches else None
    return np.asarray(reranker.score(q, base, frames, patches), dtype=np.float64)


def stage_one(
    index: IndexStore, query_emb: np.ndarray, candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """(base scores, rows) of the top ``candidates`` by the ANN, best first."""
    if len(index) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    scores, ids = index.ann_search(query_emb[None], candidates)
    keep = ids[0] >= 0
    return scores[0][keep].astype(np.float64), ids[0][keep].astype(np.int64)


def search_index(
    index: IndexStore,
    query: str,
    k: int = 10,
    candidates: int = 100,
    rerank: str | None = "auto",
    alpha: float = 0.4,
    margin: float = 0.25,
    rerank_model: str | None = None,
) -> list[Hit]:
    query = check_query(query)
    k = check("k", k)
    candidates = max(check("candidates", candidates), k)
    encoder, pool_agg = index.models()
    reranker = get_reranker(index, rerank, alpha, rerank_model)
    q = encode_query(encoder, pool_agg, query, words=bool(getattr(reranker, "needs_words", False)))
    base, rows = stage_one(index, q.embedding, candidates)
    return rank_candidates(index, q, base, rows, reranker, k, margin)


def rank_candidates(
    index: IndexStore, q: QueryFeatures, base, rows, reranker, k: int, margin: float = 0.25
) -> list[Hit]:
    """Stage 2 for one encoded query: rerank the candidate ``rows`` (their stage-1 scores are
    recomputed exactly from the pooled vectors, so a hit's numbers do not depend on how many
    queries FAISS searched at once), keep the best ``k``, and give each its best moment and
    thumbnail."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows):
        pooled = np.asarray(index.pooled[np.sort(rows)], dtype=np.float64)
        lookup = dict(zip(np.sort(rows).tolist(), pooled @ q.embedding.astype(np.float64)))
        base = np.array([lookup[int(r)] for r in rows], dtype=np.float64)
    if reranker is None:  # only the hits' frames are read (for their moments)
        final = base
        order = np.argsort(-final, kind="stable")[:k]
        frames = {int(j): index.frames(int(rows[j])) for j in order}
    else:
        frames = [index.frames(int(r)) for r in rows]
        final = rerank_scores(index, reranker, q, base, rows, [f for f, _ in frames])
        order = np.argsort(-final, kind="stable")[:k]
    hits = []
    for rank, j in enumerate(order, start=1):
        emb, ts = frames[j]
        row = int(rows[j])
        sims = frame_similarities(q.embedding, emb)
        entry = index.videos[row]
        moment = best_moment(sims, ts, entry.get("duration", 0.0), margin)
        hits.append(make_hit(rank, row, entry["path"], final[j], base[j], moment[:2], moment[2],
                             entry.get("duration")))  # fmt: skip
    return hits


def results_json(query: str, hits: list[Hit], index: IndexStore, rerank: str) -> dict:
    """The ``--json`` answer of ``vr search`` (``schemas.SearchResult``; the HTTP API's too)."""
    return SearchResult(
        query=query, rerank=rerank, score_kind=score_kind(rerank),
        generation=index.manifest.get("generation"), results=hits,
    ).model_dump()  # fmt: skip


def score_kind(rerank: str) -> str:
    """The scale of a hit's score under ``rerank`` (resolved): cosines unless a trained
    cross-encoder scores (its logits)."""
    return "cosine" if rerank in ("none", "cliprerank", "query_scored", "mean") else "logit"


def _search_encoded(index: IndexStore, qf: list[QueryFeatures], k, candidates, reranker, margin):
    if len(index) == 0:
        return [[] for _ in qf]
    scores, ids = index.ann_search(np.stack([q.embedding for q in qf]), candidates)
    out = []
    for j, q in enumerate(qf):
        keep = ids[j] >= 0
        base = scores[j][keep].astype(np.float64)
        out.append(
            rank_candidates(index, q, base, ids[j][keep].astype(np.int64), reranker, k, margin)
        )
    return out


def check_same_model(indexes: list[IndexStore]) -> None:
    """Sharded search merges scores: every index must embed with the same model."""
    first = indexes[0]
    seen = {str(first.dir.resolve())}
    for other in indexes[1:]:
        if str(other.dir.resolve()) in seen:
            raise UserError(f"--index {other.dir} is given twice")
        seen.add(str(other.dir.resolve()))
        diff = [key for key in ("encoder", "aggregator")
                if other.fingerprint.get(key) != first.fingerprint.get(key)]  # fmt: skip
        if diff:
            raise UserError(
                f"--index {other.dir} was built with another model than --index {first.dir} "
                f"(its {' and '.join(diff)} differ): searching several indexes needs one model"
            )


def search_batch(
    index: IndexStore | list[IndexStore],
    queries: list[str],
    k: int = 10,
    candidates: int = 100,
    rerank: str | None = "auto",
    alpha: float = 0.4,
    margin: float = 0.25,
    batch_size: int = 256,
    rerank_model: str | None = None,
) -> list[list[Hit]]:
    """Two-stage search of many queries over one index or several (sharded search: the same
    model required; each index is searched, then the hits are merged by score, a video found in
    two indexes counted once). Stage 1 is one FAISS batch search per ``batch_size`` queries and
    index; every hit equals the hit a single search of its query gives. One hit list per query,
    best first."""
    indexes = [index] if isinstance(index, IndexStore) else list(index)
    if not indexes:
        raise UserError("no index given")
    queries = check_queries(queries)
    k = check("k", k)
    candidates = max(check("candidates", candidates), k)
    check_same_model(indexes)
    encoder, pool_agg = indexes[0].models()
    for other in indexes[1:]:
        if other._models is None:
            other._models = (encoder, pool_agg)
    reranker = get_reranker(indexes[0], rerank, alpha, rerank_model)
    words = bool(getattr(reranker, "needs_words", False))
    out: list[list[Hit]] = []
    for s in range(0, len(queries), max(1, int(batch_size))):
        # one query at a time through the text tower: its embedding, hence every number of
        # its hits, is then exactly a single search's (a batched pass rounds differently,
        # most under bf16 autocast); stage 1 and stage 2 still run per batch
        qf = [encode_query(encoder, pool_agg, q, words) for q in queries[s : s + batch_size]]
        per_index = [_search_encoded(idx, qf, k, candidates, reranker, margin) for idx in indexes]
        if len(indexes) > 1:  # a hit's id is a row of its own index: say which
            per_index = [[[h.model_copy(update={"index": str(idx.dir)}) for h in hits]
                          for hits in lists] for idx, lists in zip(indexes, per_index)]  # fmt: skip
        for j in range(len(qf)):
            out.append(merge_hits([hits[j] for hits in per_index], k))
    return out


def merge_hits(lists: list[list[Hit]], k: int) -> list[Hit]:
    """Hits of several indexes merged by score (stable: earlier indexes first on ties), one hit
    per video, ranks renumbered."""
    if len(lists) == 1:
        return lists[0][:k]
    best: dict[str, Hit] = {}
    for hits in lists:
        for h in hits:
            if h.video not in best or h.score > best[h.video].score:
                best[h.video] = h
    merged = sorted(best.values(), key=lambda h: -h.score)[:k]
    return [h.model_copy(update={"rank": r}) for r, h in enumerate(merged, start=1)]
