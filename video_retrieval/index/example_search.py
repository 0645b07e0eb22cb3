"""Ranking a query by example (``examples.ExampleQuery``): stage 1 over the pooled vectors, stage 2
from the candidates' stored frames, the moment, the answer.

Stage 1: the query's ``embedding`` against the pooled video vectors with the ANN (as a text
search), its ``base_score`` the exact cosine. The query video (``exclude``) is dropped from its own
results unless ``include_self``.

Stage 2 (``rerank``):

* ``frames``: for an image, the best cosine between the image and any stored frame of the
  candidate (max over frames); for text + image, ``(1 - W) * cos(text, pooled vector) + W *`` that
  (each part scored where its tower was trained to match); for a clip, the best *alignment* of the clip on the
  candidate's stored frames: the clip is slid along the video (each placement puts its first frame
  on a stored frame), each clip frame is compared with the stored frame nearest its time, and the
  placement's score is the mean of those cosines (the best placement wins);
* ``cliprerank``: ``alpha * base + (1 - alpha) * frames`` (CLIPRerank's mix, ``--alpha``);
* ``none``: the stage-1 cosine;
* ``auto``: ``AUTO_RERANK`` of the query's kind, chosen by BENCHMARKS.md "Search by example"
  (frame-to-video and clip-to-video R@1 on the synthetic test split).

The moment: for an image, the run of stored frames around the best-matching one
(``rerank.best_moment``, as for text), and ``matched_frame_time`` is that frame's time; for a clip,
the best placement ``[start, start + clip length]``, and ``matched_frame_time`` is the stored frame
its first frame was placed on.
"""

from __future__ import annotations

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index.examples import ExampleQuery
from video_retrieval.index.hits import Hit, make_hit
from video_retrieval.index.rerank import best_moment, l2n
from video_retrieval.index.search import stage_one
from video_retrieval.index.store import IndexStore
from video_retrieval.limits import check
from video_retrieval.schemas import SearchResult

RERANKS = ("auto", "none", "frames", "cliprerank")
#: the default stage 2 per kind of example (BENCHMARKS.md "Search by example")
AUTO_RERANK = {"image": "frames", "text+image": "frames", "video": "frames", "like": "none"}


def resolve_example_rerank(ex: ExampleQuery, rerank: str | None) -> str:
    """``rerank`` with ``auto`` resolved for the query ``ex`` (``AUTO_RERANK``; a range of an
    indexed video is a clip: ``frames``)."""
    rerank = rerank or "auto"
    if rerank not in RERANKS:
        raise UserError(
            f"--rerank {rerank}: an image or clip query reranks with one of {', '.join(RERANKS)}"
        )
    if rerank != "auto":
        return rerank
    return "frames" if ex.kind == "like" and "start" in ex.example else AUTO_RERANK[ex.kind]


def align(clip: np.ndarray, times: np.ndarray, span: float, frames: np.ndarray, ts: np.ndarray,
          duration: float) -> tuple[float, float, float, float]:  # fmt: skip
    """Best placement of a clip (normalised frames [M,D] at ``times`` s from its start, ``span``
    s long) on a video's stored frames [N,D] at ``ts``: (score, start, end, matched frame time),
    score = mean over clip frames of the cosine with the stored frame nearest its time."""
    ts = np.asarray(ts, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    sims = np.asarray(clip, np.float32) @ l2n(frames).T  # [M, N]
    if not len(ts) or not len(times):
        return -1.0, 0.0, float(duration), 0.0
    room = max(0.0, float(duration) - float(span))
    offsets = np.unique(np.clip(ts - times[0], 0.0, room))  # the first clip frame on each frame
    targets = offsets[:, None] + times[None, :]  # [O, M] seconds in the video
    right = np.clip(np.searchsorted(ts, targets), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    nearest = np.where(np.abs(ts[left] - targets) <= np.abs(ts[right] - targets), left, right)
    scores = sims[np.arange(len(times))[None, :], nearest].mean(1)
    best = int(np.argmax(scores))
    start = float(offsets[best])
    end = float(min(start + span, duration)) if duration > 0 else start + span
    return float(scores[best]), start, max(end, start), float(ts[nearest[best, 0]])


def frame_score(ex: ExampleQuery, frames, ts, duration, pooled=None) -> tuple[float, tuple, float]:
    """(stage-2 frame score, (moment start, end), matched frame time) of one candidate
    (``pooled``: its pooled vector, for the text part of a text + image query)."""
    if ex.is_clip:
        score, start, end, matched = align(ex.frames, ex.times, ex.span, frames, ts, duration)
        return score, (start, end), matched
    sims = l2n(frames) @ ex.frames[0]
    start, end, matched = best_moment(sims, ts, duration)
    score = float(sims.max()) if len(sims) else -1.0
    if ex.text is not None and pooled is not None:  # each part where it was trained to match
        w = float(ex.image_weight)
        score = (1.0 - w) * float(np.asarray(pooled, np.float64) @ ex.text) + w * score
    return score, (start, end), matched


def rank_example(
    index: IndexStore,
    ex: ExampleQuery,
    k: int = 10,
    candidates: int = 100,
    rerank: str | None = "auto",
    alpha: float = 0.4,
    include_self: bool = False,
) -> list[Hit]:
    """The hits of an encoded example, best first (module doc)."""
    k = check("k", k)
    candidates = max(check("candidates", candidates), k)
    alpha = check("alpha", alpha)
    rerank = resolve_example_rerank(ex, rerank)
    drop = None if include_self else ex.exclude
    _, rows = stage_one(index, ex.embedding, candidates + (drop is not None))
    rows = np.array([r for r in rows.tolist() if r != drop][:candidates], dtype=np.int64)
    if not len(rows):
        return []
    base = np.asarray(index.pooled[rows], dtype=np.float64) @ ex.embedding.astype(np.float64)

    def score(j: int):
        row = int(rows[j])
        frames, ts = index.frames(row)
        duration = float(index.videos[row].get("duration") or 0.0)
        return frame_score(ex, frames, ts, duration, index.pooled[row])

    if rerank == "none":  # only the hits' frames are read (for their moments)
        order = np.argsort(-base, kind="stable")[:k]
        final, found = base, {int(j): score(int(j)) for j in order}
    else:
        found = {j: score(j) for j in range(len(rows))}
        mx = np.array([found[j][0] for j in range(len(rows))], dtype=np.float64)
        final = mx if rerank == "frames" else alpha * base + (1.0 - alpha) * mx
        order = np.argsort(-final, kind="stable")[:k]
    hits = []
    for rank, j in enumerate(order, start=1):
        row = int(rows[j])
        entry = index.videos[row]
        _, moment, matched = found[int(j)]
        hits.append(make_hit(rank, row, entry["path"], final[j], base[j], moment, matched,
                             entry.get("duration"), matched_frame_time=matched))  # fmt: skip
    return hits


def example_results_json(ex: ExampleQuery, hits: list[Hit], index: IndexStore, rerank: str) -> dict:
    """The ``--json`` answer of an example query (``schemas.SearchResult``, as a text query's,
    with ``query_kind`` and ``example`` saying what was searched for)."""
    return SearchResult(
        query=ex.label, query_kind=ex.kind, example=ex.example, rerank=rerank,
        score_kind="cosine", generation=index.manifest.get("generation"), results=hits,
    ).model_dump()  # fmt: skip
