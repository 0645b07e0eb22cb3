"""Moment evaluation from files: ground truth in QVHighlights, DiDeMo or Charades-STA form
(``datasets.moments``), predictions in the QVHighlights jsonl form (``datasets.moment_preds``,
validated), scored with the protocol's metrics (``metrics.moments``, ``metrics.moment_protocols``).
"""

from __future__ import annotations

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.metrics.moment_protocols import (
    charades_metrics,
    didemo_metrics,
    didemo_prior_predictions,
    didemo_prior_ranking,
)
from video_retrieval.metrics.moments import evaluate, qid_key

PROTOCOLS = ("auto", "qvhighlights", "didemo", "charades")


def load_ground_truth(path, protocol: str = "auto", durations=None) -> tuple[str, list[dict]]:
    """(protocol, validated rows): ``auto`` detects the format from the file (a JSON list is
    DiDeMo, JSON lines QVHighlights, ``##`` lines Charades-STA). ``charades`` also scores a
    QVHighlights-style jsonl (lighthouse's Charades-STA files) with the Charades figures."""
    from video_retrieval.datasets.moments import (
        detect_format,
        load_charades_sta,
        load_didemo_moments,
        load_qvhighlights,
    )

    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    fmt = detect_format(path)
    if protocol == "auto":
        protocol = fmt
    if protocol == "didemo" and fmt != "didemo":
        raise UserError(f"{path}: --protocol didemo needs a LocalizingMoments JSON list")
    if protocol == "qvhighlights" and fmt != "qvhighlights":
        raise UserError(f"{path}: --protocol qvhighlights needs QVHighlights JSON lines")
    if fmt == "didemo":
        return protocol, load_didemo_moments(path)
    if fmt == "charades":
        return protocol, load_charades_sta(path, durations)
    return protocol, load_qvhighlights(path, require_text=False)


def evaluate_files(
    pred_path, gt_path, match_number: bool = True, protocol: str = "auto", durations=None
) -> dict:
    """``vr eval moments --pred FILE --gt FILE``: validated inputs, the protocol's metrics.

    Returns ``{"protocol", "brief", "warnings", ...}``: for QVHighlights the official evaluator's
    keys (``brief``, ``full``, ``short``, ...); for DiDeMo ``brief`` = {R@1, R@5, mIoU}; for
    Charades-STA ``brief`` = {R1@0.3, R1@0.5, R1@0.7, R5@0.3, R5@0.5, R5@0.7, mIoU}; each with
    ``num_queries``. ``warnings`` lists what was repaired (windows clipped to the duration) or
    worth knowing (windows not sorted by score: the order given is the ranking)."""
    from video_retrieval.datasets.moment_preds import (
        clip_to_durations,
        load_predictions,
        unsorted_count,
    )

    protocol, gts = load_ground_truth(gt_path, protocol, durations)
    preds = load_predictions(pred_path)
    pkeys = {qid_key(p["qid"]) for p in preds}
    gkeys = {qid_key(g["qid"]) for g in gts}
    if match_number and pkeys != gkeys:
        missing = sorted(gkeys - pkeys)
        extra = sorted(pkeys - gkeys)
        raise UserError(
            f"prediction and ground-truth qids differ: {len(missing)} ground-truth qid(s) without "
            f"a prediction (first: {missing[:5]}), {len(extra)} predicted qid(s) not in the "
            f"ground truth (first: {extra[:5]})"
        )
    warnings = []
    durations_by_qid = {qid_key(g["qid"]): g.get("duration") for g in gts}
    clipped = clip_to_durations(preds, durations_by_qid)
    if clipped:
        warnings.append(
            f"{clipped} predicted window(s) end after their video's duration; clipped to it"
        )
    unsorted = unsorted_count(preds)
    if unsorted:
        warnings.append(
            f"{unsorted} prediction(s) list windows not in descending score order; the order "
            f"given is used as the ranking (as the official evaluators do)"
        )
    if protocol == "didemo":
        m = didemo_metrics(preds, gts)
        res = {"brief": {k: m[k] for k in ("R@1", "R@5", "mIoU")}, "num_queries": m["num_queries"]}
    elif protocol == "charades":
        m = charades_metrics(preds, gts)
        n = m.pop("num_queries")
        res = {"brief": m, "num_queries": n}
    else:
        if not any(g.get("relevant_windows") or g.get("saliency_scores") for g in gts):
            raise UserError(
                f"{gt_path}: no ground-truth windows or saliency scores to score against (an "
                f"unlabelled release such as highlight_test_release.jsonl?)"
            )
        res = evaluate(preds, gts, match_number=match_number)
        if not res["brief"]:
            raise UserError(f"{pred_path}: nothing to score (no windows, no saliency scores)")
    return {"protocol": protocol, **res, "warnings": warnings}


def evaluate_didemo_prior(train_path, gt_path, protocol: str = "auto") -> dict:
    """``vr eval moments --prior TRAIN --gt GT``: DiDeMo's moment-frequency prior counted from
    ``TRAIN`` and scored on ``GT`` with the official protocol; ``prior`` lists the ranking."""
    protocol, gts = load_ground_truth(gt_path, protocol)
    if protocol != "didemo":
        raise UserError(f"{gt_path}: --prior is DiDeMo's baseline; this is {protocol} ground truth")
    _, train = load_ground_truth(train_path, "didemo")
    ranking = didemo_prior_ranking(train)
    m = didemo_metrics(didemo_prior_predictions(gts, ranking), gts)
    return {
        "protocol": protocol,
        "method": "moment_frequency_prior",
        "brief": {k: m[k] for k in ("R@1", "R@5", "mIoU")},
        "num_queries": m["num_queries"],
        "prior": [list(x) for x in ranking],
        "train_annotations": len(train),
        "warnings": [],
    }


def json_safe(obj):
    """``obj`` with every non-finite float replaced by None (so ``json.dumps(allow_nan=False)``
    never fails and no NaN / Infinity reaches a JSON reader)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
