"""Text queries: checking them, reading a queries file, and encoding them (one or many at a time)
with an index's encoder and pooling aggregator into ``QueryFeatures``.
"""

from __future__ import annotations

import numpy as np
import torch

from video_retrieval.datasets.text_files import read_query_file  # noqa: F401  (re-exported)
from video_retrieval.errors import UserError
from video_retrieval.index.rerank import (
    QueryFeatures,
)


@torch.no_grad()
def encode_query(encoder, aggregator, query: str, words: bool = False) -> QueryFeatures:
    """Sentence (and optionally word) features of one query."""
    tokens = encoder.tokenize([query])
    feats = encoder.encode_text(tokens, return_words=words)
    emb = aggregator.embed_text(feats).float()[0].cpu().numpy()
    emb = emb / (np.linalg.norm(emb) + 1e-8)
    return QueryFeatures(query, emb.astype(np.float32), feats)


@torch.no_grad()
def encode_queries(
    encoder, aggregator, queries: list[str], words: bool = False, batch_size: int = 256
) -> list[QueryFeatures]:
    """``encode_query`` for many queries, ``batch_size`` through the text tower at a time."""
    out = []
    for s in range(0, len(queries), max(1, int(batch_size))):
        chunk = list(queries[s : s + batch_size])
        feats = encoder.encode_text(encoder.tokenize(chunk), return_words=words)
        emb = aggregator.embed_text(feats).float().cpu().numpy()
        emb = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-8)
        out += [QueryFeatures(q, emb[i].astype(np.float32), feats[i : i + 1])
                for i, q in enumerate(chunk)]  # fmt: skip
    return out


def check_queries(queries) -> list[str]:
    if isinstance(queries, str):
        raise UserError("give a list of queries (one string is one query: use search)")
    out = []
    for i, q in enumerate(queries, start=1):
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"query {i} is empty: every query must be a sentence")
        out.append(q.strip())
    if not out:
        raise UserError("no queries given")
    return out
