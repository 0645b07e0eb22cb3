"""Two-stage search over an index: ANN over pooled vectors, then rerank from frame features.

Stage 1: the query's sentence embedding (through the pooling aggregator's ``embed_text``,
L2-normalised) against the pooled video vectors with FAISS; the top ``candidates`` come with a
*base score* = cosine(query, pooled vector) in [-1, 1].
Stage 2: a reranker (``rerank.build_reranker``) rescores those candidates from their stored
frame embeddings; ``none`` keeps the base score. Every hit also gets its best-matching moment
(``rerank.best_moment`` over per-frame cosine similarities) and a thumbnail timestamp.

Example::

    >>> from video_retrieval.index_store import Index
    >>> hits = Index.open("my_index").search("a green triangle shrinks", k=5)  # doctest: +SKIP
    >>> [h.to_dict() for h in hits][0]                                       # doctest: +SKIP
    {'rank': 1, 'video': '/abs/v.mp4', 'score': 0.52, 'moment': {'start': 1.5, 'end': 4.5},
     'thumbnail_time': 3.0}
"""

from __future__ import annotations

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.index_store import Hit, Index
from video_retrieval.rerank import QueryFeatures, best_moment, build_reranker, frame_similarities


def check_query(query) -> str:
    if not isinstance(query, str) or not query.strip():
        raise UserError("the query is empty: give a sentence to search for")
    return query.strip()


@torch.no_grad()
def encode_query(encoder, aggregator, query: str, words: bool = False) -> QueryFeatures:
    """Sentence (and optionally word) features of one query."""
    tokens = encoder.tokenize([query])
    feats = encoder.encode_text(tokens, return_words=words)
    emb = aggregator.embed_text(feats).float()[0].cpu().numpy()
    emb = emb / (np.linalg.norm(emb) + 1e-8)
    return QueryFeatures(query, emb.astype(np.float32), feats)


def get_reranker(index: Index, rerank: str | None, alpha: float):
    cache = index.__dict__.setdefault("_rerankers", {})
    key = (rerank or "none", float(alpha))
    if key not in cache:
        cache[key] = build_reranker(
            rerank,
            index.embed_dim,
            alpha=alpha,
            index_fingerprint=index.fingerprint["encoder"],
            patch_topk=index.patch_topk,
        )
    return cache[key]


def stage_one(
    index: Index, query_emb: np.ndarray, candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """(base scores, rows) of the top ``candidates`` by the ANN, best first."""
    from video_retrieval.ann import ann_search

    if len(index) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    scores, ids = ann_search(index.ann(), query_emb[None], candidates)
    keep = ids[0] >= 0
    return scores[0][keep].astype(np.float64), ids[0][keep].astype(np.int64)


def search_index(
    index: Index,
    query: str,
    k: int = 10,
    candidates: int = 100,
    rerank: str | None = "cliprerank",
    alpha: float = 0.4,
    margin: float = 0.25,
) -> list[Hit]:
    query = check_query(query)
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    candidates = max(int(candidates), int(k))
    encoder, pool_agg = index.models()
    reranker = get_reranker(index, rerank, alpha)
    q = encode_query(encoder, pool_agg, query, words=bool(getattr(reranker, "needs_words", False)))
    base, rows = stage_one(index, q.embedding, candidates)
    frames = [index.frames(int(r)) for r in rows]
    if reranker is None:
        final = base
    else:
        patches = [index.patches(int(r)) for r in rows] if reranker.needs_patches else None
        final = np.asarray(
            reranker.score(q, base, [f for f, _ in frames], patches), dtype=np.float64
        )
    order = np.argsort(-final, kind="stable")[:k]
    hits = []
    for rank, j in enumerate(order, start=1):
        emb, ts = frames[j]
        row = int(rows[j])
        sims = frame_similarities(q.embedding, emb)
        start, end, thumb = best_moment(sims, ts, index.videos[row].get("duration", 0.0), margin)
        hits.append(
            Hit(
                rank,
                index.videos[row]["path"],
                float(final[j]),
                (start, end),
                thumb,
                float(base[j]),
            )
        )
    return hits


def results_json(query: str, hits: list[Hit]) -> dict:
    """The stable ``--json`` schema of ``vr search``."""
    return {"query": query, "results": [h.to_dict() for h in hits]}
