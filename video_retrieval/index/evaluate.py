"""Retrieval evaluation of an index against a captions file: every caption searched (batched), its
video's rank among the indexed videos, R@1/5/10, MdR and MnR (``metrics.retrieval``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from video_retrieval.datasets.text_files import json_lines
from video_retrieval.errors import UserError


def read_captions(path, split=None) -> list[tuple[str, str]]:
    """(absolute video path, caption) of the validated lines (``read_caption_lines``)."""
    return [(v, c) for v, c, _n in read_caption_lines(path, split)]


def read_caption_lines(path, split=None) -> list[tuple[str, str, int]]:
    """(absolute video path, caption, line number) of validated ``captions.jsonl`` lines (``UserError`` naming the line for invalid JSON, a line
    that is not an object, a missing/null/non-string/empty ``video``, a missing or non-string
    ``caption``). Empty captions are kept (``evaluate_retrieval`` counts them as invalid)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such captions file: {path}")
    out = []
    lines = 0
    for n, row in json_lines(p, str(path)):
        lines += 1
        if not isinstance(row, dict):
            raise UserError(f'{path}:{n}: expected a {{"video", "caption"}} JSON object')
        for key in ("video", "caption"):
            if key not in row:
                raise UserError(f"{path}:{n}: missing field {key!r}")
        video, caption = row["video"], row["caption"]
        if not isinstance(video, str) or not video.strip():
            raise UserError(
                f"{path}:{n}: 'video' must be a non-empty path, not {json.dumps(video)}"
            )
        if not isinstance(caption, str):
            raise UserError(f"{path}:{n}: 'caption' must be a string, not {json.dumps(caption)}")
        if split is not None and row.get("split") != split:
            continue
        out.append((str((p.parent / video).resolve()), caption, n))
    if not lines:
        raise UserError(f"{path}: no captions (empty file)")
    if not out:
        raise UserError(f"{path}: no captions with split {split!r}")
    return out


def evaluate_retrieval(
    index, captions, rerank="auto", candidates=100, alpha=0.4, rerank_model=None, progress=False
) -> dict:
    """Metrics of ``index`` for ``captions`` [(abs video path, caption[, line])], ranking the
    videos as ``vr search`` does: the top ``candidates`` of the ANN (so its recall counts),
    reranked if asked (``auto``: ``search.default_rerank``; ``rerank_model``: CLIPRerank's own
    frame encoder), then every other video below them by exact cosine. Empty captions are
    ``invalid`` (their lines in ``invalid_lines``), captions of videos not in the index
    ``skipped``; neither is a query."""
    import torch

    from video_retrieval.index.queries import encode_query
    from video_retrieval.index.search import get_reranker, rerank_scores, resolve_rerank, stage_one
    from video_retrieval.metrics.retrieval import retrieval_metrics

    targets, texts, skipped, invalid = [], [], 0, []
    for k, item in enumerate(captions):
        video, caption = item[0], item[1]
        if not caption.strip():
            invalid.append(item[2] if len(item) > 2 else k + 1)
            continue
        row = index.row_of(video)
        if row is None:
            skipped += 1
            continue
        targets.append(row)
        texts.append(caption.strip())
    if not texts:
        if invalid and not skipped:
            raise UserError(f"every caption is empty (lines {invalid[:5]})")
        raise UserError(
            f"none of the captions' videos is in the index ({skipped} not indexed, "
            f"{len(invalid)} empty caption(s))"
        )
    encoder, pool = index.models()
    rerank = resolve_rerank(index, rerank, rerank_model)
    reranker = get_reranker(index, rerank, alpha, rerank_model)
    pooled = np.asarray(index.pooled, dtype=np.float32)
    sim = np.zeros((len(texts), len(index)), dtype=np.float64)
    frames_cache: dict[int, np.ndarray] = {}
    bar = None
    if progress:  # on stderr, and only when it is a terminal
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(texts), unit="query", desc=f"evaluating ({rerank})", file=sys.stderr,
                   disable=None)  # fmt: skip
    for i, text in enumerate(texts):
        if bar is not None:
            bar.update(1)
        q = encode_query(encoder, pool, text, words=bool(getattr(reranker, "needs_words", False)))
        base = pooled @ q.embedding
        ann_scores, cand = stage_one(index, q.embedding, max(1, candidates))
        sim[i] = base - 1e3  # non-candidates rank below every candidate
        if reranker is None:
            sim[i, cand] = ann_scores
            continue
        frames = None
        if getattr(reranker, "frame_model", None) is None:
            for r in cand:
                if int(r) not in frames_cache:
                    frames_cache[int(r)] = index.frames(int(r))[0]
            frames = [frames_cache[int(r)] for r in cand]
        with torch.no_grad():
            sim[i, cand] = rerank_scores(index, reranker, q, ann_scores, cand, frames)
    if bar is not None:
        bar.close()
    res = retrieval_metrics(sim, np.asarray(targets))
    return {
        "queries": len(texts),
        "videos": len(index),
        "skipped": skipped,
        "invalid": len(invalid),
        "invalid_lines": invalid[:20],
        "rerank": rerank,
        "rerank_model": rerank_model,
        "t2v": res["t2v"],
    }
