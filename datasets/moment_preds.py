"""Moment prediction files (QVHighlights submission format), read and validated.

One JSON object per line::

    {"qid": int | str, "vid": str (optional), "pred_relevant_windows": [[start_s, end_s, score], ...],
     "pred_saliency_scores": [float, ...] (optional)}

Windows are in seconds and ranked by the caller (the list order is the ranking, as in the official
evaluators). Every problem is a ``UserError`` naming the file and line: invalid JSON, a line that
is not an object, a missing ``qid``, a row with neither ``pred_relevant_windows`` nor
``pred_saliency_scores``, a window that is not three numbers, non-finite numbers (NaN, inf),
negative times, start > end, a duplicate qid. An empty file is an error too. Windows beyond their
video's duration are clipped by ``clip_to_durations`` (with a count for a warning), not refused.

The primitives (``finite``, ``check_qid``, ``check_window``) are shared with the ground-truth
readers in ``datasets.moments``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from video_retrieval.datasets.text_files import json_lines

from video_retrieval.errors import UserError


class RowError(ValueError):
    """A problem in one row; the reader adds the file and line."""


def finite(x, what: str) -> float:
    """``x`` as a finite float; bools, strings, None, NaN and inf are refused."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RowError(f"{what} must be a number, not {json.dumps(x)}")
    v = float(x)
    if not math.isfinite(v):
        raise RowError(f"{what} is not finite ({x})")
    return v


def check_qid(row: dict, key: str = "qid"):
    if key not in row:
        raise RowError(f"missing field {key!r}")
    q = row[key]
    if isinstance(q, bool) or not isinstance(q, (int, str)) or (isinstance(q, str) and not q):
        raise RowError(f"{key} must be an integer or a non-empty string, not {json.dumps(q)}")
    return q


def check_window(w, what: str, with_score: bool) -> list[float]:
    """``[start, end]`` (or ``[start, end, score]``) seconds: finite, start >= 0, start <= end."""
    n = 3 if with_score else 2
    shape = "[start, end, score]" if with_score else "[start, end]"
    if not isinstance(w, (list, tuple)) or len(w) != n:
        raise RowError(f"{what} must be {shape}, not {json.dumps(w)}")
    s = finite(w[0], f"{what} start")
    e = finite(w[1], f"{what} end")
    if s < 0 or e < 0:
        raise RowError(f"{what} has a negative time ({json.dumps(w)})")
    if s > e:
        raise RowError(f"{what} starts after it ends ({json.dumps(w)})")
    if with_score:
        return [s, e, finite(w[2], f"{what} score")]
    return [s, e]


def read_json_lines(path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-empty line; an empty file is an error."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such {what} file: {p}")
    out = []
    for n, row in json_lines(p):
        if not isinstance(row, dict):
            raise UserError(f"{p}:{n}: expected a JSON object, not {type(row).__name__}")
        out.append((n, row))
    if not out:
        raise UserError(f"{p}: no {what} rows (empty file)")
    return out


def validate_prediction(row: dict) -> dict:
    qid = check_qid(row)
    if "pred_relevant_windows" not in row and "pred_saliency_scores" not in row:
        raise RowError("missing field 'pred_relevant_windows'")
    out = dict(row)
    out["qid"] = qid
    if "pred_relevant_windows" in row:
        ws = row["pred_relevant_windows"]
        if not isinstance(ws, list):
            raise RowError(f"pred_relevant_windows must be a list, not {json.dumps(ws)}")
        out["pred_relevant_windows"] = [
            check_window(w, f"window {k}", with_score=True) for k, w in enumerate(ws)
        ]
    if "pred_saliency_scores" in row:
        sc = row["pred_saliency_scores"]
        if not isinstance(sc, list):
            raise RowError(f"pred_saliency_scores must be a list, not {json.dumps(sc)}")
        out["pred_saliency_scores"] = [
            finite(x, f"pred_saliency_scores[{k}]") for k, x in enumerate(sc)
        ]
    return out


def load_predictions(path) -> list[dict]:
    """Validated prediction rows (see the module docstring); each keeps its ``_line``."""
    rows = []
    seen: dict[str, int] = {}
    for n, row in read_json_lines(path, "prediction"):
        try:
            r = validate_prediction(row)
        except RowError as e:
            raise UserError(f"{path}:{n}: {e}") from None
        key = str(r["qid"])
        if key in seen:
            raise UserError(f"{path}:{n}: duplicate qid {r['qid']} (first on line {seen[key]})")
        seen[key] = n
        r["_line"] = n
        rows.append(r)
    return rows


def unsorted_count(preds: list[dict]) -> int:
    """Predictions whose windows are not in descending score order (the order is the ranking)."""
    n = 0
    for p in preds:
        scores = [w[2] for w in p.get("pred_relevant_windows") or []]
        if any(a < b for a, b in zip(scores, scores[1:])):
            n += 1
    return n


def clip_to_durations(preds: list[dict], durations: dict) -> int:
    """Clip every window to ``[0, duration]`` of its query (``durations``: qid key -> seconds or
    None); returns how many windows were changed."""
    changed = 0
    for p in preds:
        dur = durations.get(str(p["qid"]))
        if dur is None:
            continue
        ws = p.get("pred_relevant_windows") or []
        for w in ws:
            if w[1] > dur:
                w[0] = min(w[0], dur)
                w[1] = dur
                changed += 1
    return changed
