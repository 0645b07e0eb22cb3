"""Text queries: checking them, reading a queries file, and encoding them (one or many at a time)
with an index's encoder and pooling aggregator into ``QueryFeatures``.
"""

from __future__ import annotations

import numpy as np
import torch

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


def read_query_file(path, flag: str = "--queries") -> list[tuple[int, str]]:
    """(line number, query) of a queries file: one query per line, or ``captions.jsonl`` lines
    (a JSON object with a ``"caption"``, or ``"query"``, string). Blank lines are skipped; an
    invalid line is a ``UserError`` naming it."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag}: no such file: {path}")
    out = []
    try:
        with open(p, encoding="utf-8") as f:
            for n, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
                    text = obj.get("caption", obj.get("query"))
                    if not isinstance(text, str):
                        raise UserError(f'{path} line {n}: no "caption" string')
                    line = text.strip()
                    if not line:
                        raise UserError(f"{path} line {n}: the caption is empty")
                out.append((n, line))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not out:
        raise UserError(f"{path}: no queries (the file is empty)")
    return out
