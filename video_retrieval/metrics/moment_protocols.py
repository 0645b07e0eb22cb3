"""The DiDeMo and Charades-STA moment protocols.

DiDeMo (LocalizingMoments ``utils/eval.py``): a video is cut into six 5 s segments and a moment
is one of the 21 contiguous segment spans; predicted windows become a ranking of those spans,
scored by R@1 / R@5 (the mean of the 3 best annotator ranks) and mIoU (the mean of the 3 best
IoUs of the top-1). Charades-STA: R1@IoU 0.3 / 0.5 / 0.7 and mIoU of the top window.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.metrics.moments import iou_cross, percent, qid_key

DIDEMO_MOMENTS = [(i, j) for i in range(6) for j in range(i, 6)]  # the 21 candidate moments


DIDEMO_SEGMENT = 5.0  # seconds per segment


def snap_to_segments(start: float, end: float, segment: float = DIDEMO_SEGMENT) -> tuple[int, int]:
    """Seconds -> the inclusive DiDeMo segment pair ``(a, b)``: both boundaries go to the nearest
    segment boundary, halves up (``a = floor(s / 5 + 1/2)``, ``b = floor(e / 5 + 1/2) - 1``),
    then ``0 <= a <= 5`` and ``a <= b <= 5`` (a window shorter than half a segment keeps one
    segment)."""
    a = int(np.floor(start / segment + 0.5))
    b = int(np.floor(end / segment + 0.5)) - 1
    a = min(5, max(0, a))
    return a, min(5, max(a, b))


def windows_to_didemo_ranking(windows, segment: float = DIDEMO_SEGMENT) -> list[tuple[int, int]]:
    """Predicted ``[start, end, score]`` rows in seconds (in ranking order) -> a ranking of all 21
    DiDeMo moments: each row snapped (``snap_to_segments``) in the order given, repeats dropped;
    then the moments not predicted, by descending IoU (segment units, inclusive ends) with the
    top-1, ties in the canonical order (0,0), (0,1), ..., (0,5), (1,1), ..., (5,5). No window at
    all ranks the 21 moments by IoU with (0, 0)."""
    ranked: list[tuple[int, int]] = []
    for w in windows:
        m = snap_to_segments(float(w[0]), float(w[1]), segment)
        if m not in ranked:
            ranked.append(m)
    top = ranked[0] if ranked else (0, 0)
    rest = [m for m in DIDEMO_MOMENTS if m not in ranked]
    rest.sort(key=lambda m: -_didemo_iou(top, m))  # stable: ties keep the canonical order
    return ranked + rest


def _didemo_iou(pred, gt) -> float:
    inter = max(0, min(pred[1], gt[1]) + 1 - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) + 1 - min(pred[0], gt[0])
    return inter / union


def didemo_query_scores(ranking, times) -> tuple[float, float]:
    """The official per-query figures: (mean of the 3 best (lowest) ranks of the annotators'
    moments in ``ranking``, mean of the 3 best IoUs of the top-1 with them)."""
    times = [tuple(t) for t in times]
    ious = np.sort([_didemo_iou(ranking[0], t) for t in times])[-3:]
    ranks = np.sort([ranking.index(t) + 1 for t in times])[:3]
    return float(np.mean(ranks)), float(np.mean(ious))


def didemo_metrics(preds: list[dict], rows: list[dict]) -> dict:
    """DiDeMo's official protocol (LocalizingMoments ``utils/eval.py``).

    Per query, every annotator's moment gets its 1-based rank in the 21-moment ranking
    (``windows_to_didemo_ranking`` of the query's predicted windows); the query's rank is the mean
    of its 3 best (lowest) annotator ranks and its IoU the mean of the 3 best IoUs of the top-1
    moment with the annotators' moments (segment units, inclusive ends). R@1 / R@5 = % of queries
    whose mean rank is <= 1 / <= 5 (so R@1 needs three annotators on the top-1 moment); mIoU =
    mean IoU x 100. ``rows`` are ``load_didemo_moments`` rows (their ``times``); a query without
    a prediction ranks by IoU with (0, 0). Percentages, 2 decimals."""
    if not rows:
        raise UserError("no DiDeMo queries to score")
    pmap = {qid_key(p["qid"]): p for p in preds}
    ranks, ious = [], []
    for r in rows:
        p = pmap.get(qid_key(r["qid"]))
        ranking = windows_to_didemo_ranking(p.get("pred_relevant_windows", []) if p else [])
        rank, iou = didemo_query_scores(ranking, r["times"])
        ranks.append(rank)
        ious.append(iou)
    ranks_a = np.asarray(ranks)
    return {
        "R@1": percent(float(np.mean(ranks_a <= 1))),
        "R@5": percent(float(np.mean(ranks_a <= 5))),
        "mIoU": percent(float(np.mean(ious))),
        "num_queries": len(rows),
    }


def didemo_prior_ranking(train_rows: list[dict]) -> list[tuple[int, int]]:
    """DiDeMo's moment-frequency prior: the 21 moments ranked by how many times training
    annotators chose each (every annotator's ``times`` entry counts once), most frequent first;
    ties in the canonical order. No video and no text: the floor a model must beat."""
    if not train_rows:
        raise UserError("no DiDeMo training annotations to count the prior from")
    counts = Counter(tuple(t) for r in train_rows for t in r["times"])
    return sorted(DIDEMO_MOMENTS, key=lambda m: -counts[m])


def didemo_prior_predictions(rows: list[dict], ranking) -> list[dict]:
    """The prior's ranking as predictions for ``rows`` (seconds; score 21 for the first moment
    down to 1): ``windows_to_didemo_ranking`` gives the ranking back unchanged."""
    n = len(ranking)
    windows = [[DIDEMO_SEGMENT * a, DIDEMO_SEGMENT * (b + 1), float(n - i)] for i, (a, b) in
               enumerate(ranking)]  # fmt: skip
    return [{"qid": r["qid"], "pred_relevant_windows": [list(w) for w in windows]} for r in rows]


CHARADES_IOUS = (0.3, 0.5, 0.7)


def charades_metrics(preds: list[dict], rows: list[dict]) -> dict:
    """Charades-STA's standard figures (one ground-truth window per query): R@1 and R@5 at IoU
    0.3 / 0.5 / 0.7 = % of queries where the first / any of the first five predicted windows (in
    the order given) has IoU >= t with the ground truth; mIoU = mean IoU of the first window x 100.
    A query without a prediction is a miss with IoU 0. Percentages, 2 decimals."""
    if not rows:
        raise UserError("no Charades-STA queries to score")
    pmap = {qid_key(p["qid"]): p for p in preds}
    top1 = np.zeros(len(rows))
    best5 = np.zeros(len(rows))
    for i, r in enumerate(rows):
        gt = np.asarray(r["relevant_windows"][:1], dtype=np.float64).reshape(-1, 2)
        p = pmap.get(qid_key(r["qid"]))
        ws = (p.get("pred_relevant_windows") or []) if p else []
        if not ws or not len(gt):
            continue
        ious = iou_cross(np.asarray([w[:2] for w in ws[:5]], dtype=np.float64), gt)[:, 0]
        top1[i] = ious[0]
        best5[i] = ious.max()
    out = {}
    for t in CHARADES_IOUS:
        out[f"R1@{t}"] = percent(float(np.mean(top1 >= t)))
    for t in CHARADES_IOUS:
        out[f"R5@{t}"] = percent(float(np.mean(best5 >= t)))
    out["mIoU"] = percent(float(np.mean(top1)))
    out["num_queries"] = len(rows)
    return out
