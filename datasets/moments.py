"""Moment-retrieval annotations, all read into QVHighlights-style rows::

    {"qid", "query", "vid", "duration" (s or None), "relevant_windows": [[s, e], ...] (s),
     optional "relevant_clip_ids", "saliency_scores" (QVHighlights), "annotator_windows" (DiDeMo),
     optional "video" (a path)}

Loaders:

* ``load_qvhighlights`` — QVHighlights / lighthouse / synthetic-world jsonl (one JSON per line).
* ``load_charades_sta`` — ``<vid> <start> <end>##<sentence>`` lines; durations from the
  ``length`` column of ``Charades_v1_{train,test}.csv`` (or a dict), else left ``None`` and filled
  in from the decoded video.
* ``load_didemo_moments`` — LocalizingMoments json: ``times`` are inclusive 5-s segment indices,
  one pair per annotator. ``relevant_windows`` holds the consensus window (most annotators; ties
  go to the earliest listed) in seconds ``[5 s, 5 (e + 1)]``; all annotator windows are kept in
  ``annotator_windows``. Nominal duration ``5 * num_segments`` (videos were cut at 30 s).

Also: saliency pair sampling (Moment-DETR) and video path resolution.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from pathlib import Path

from video_retrieval.datasets.didemo import read_didemo_records, resolve_didemo_videos
from video_retrieval.datasets.moment_preds import (
    RowError,
    check_qid,
    check_window,
    finite,
    read_json_lines,
)
from video_retrieval.datasets.text_files import text_lines

from video_retrieval.errors import UserError

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".3gp", ".mpg")
DIDEMO_SEGMENT = 5.0
DIDEMO_SEGMENTS = 6  # annotations stop at 30 s: six 5-s segments, 21 moments


def _require(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: annotation file not found")
    return p


def _qvh_row(r: dict, require_text: bool = True) -> dict:
    """One QVHighlights-style ground-truth row, validated (``RowError`` names the problem)."""
    check_qid(r)
    for key in ("query", "vid"):
        if key not in r:
            if not require_text:
                continue
            raise RowError(f"missing field {key!r}")
        if not isinstance(r[key], str):
            raise RowError(f"{key} must be a string, not {json.dumps(r[key])}")
    out = dict(r)
    ws = r.get("relevant_windows", [])
    if not isinstance(ws, list):
        raise RowError(f"relevant_windows must be a list, not {json.dumps(ws)}")
    out["relevant_windows"] = [
        check_window(w, f"relevant_windows[{k}]", with_score=False) for k, w in enumerate(ws)
    ]
    dur = r.get("duration")
    if dur is not None:
        dur = finite(dur, "duration")
        if dur <= 0:
            raise RowError(f"duration must be positive, not {r['duration']}")
    out["duration"] = dur
    ids = r.get("relevant_clip_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ids
        ):
            raise RowError("relevant_clip_ids must be a list of clip indices >= 0")
    scores = r.get("saliency_scores")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(ids or []):
            raise RowError("saliency_scores must have one entry per relevant_clip_id")
        for k, sc in enumerate(scores):
            if not isinstance(sc, list) or not sc:
                raise RowError(f"saliency_scores[{k}] must be a list of annotator scores")
            for x in sc:
                finite(x, f"saliency_scores[{k}]")
        if len({len(sc) for sc in scores}) > 1:
            raise RowError("saliency_scores rows have different numbers of annotators")
    return out


def load_qvhighlights(path, require_text: bool = True) -> list[dict]:
    """QVHighlights / lighthouse / synthetic jsonl, validated line by line (``UserError`` naming
    the line: invalid JSON, missing fields, non-finite or negative times, start > end, duplicate
    qids, saliency scores that do not match the clip ids). ``require_text=False`` (evaluation)
    does not need ``query`` / ``vid``, as the official evaluator."""
    rows = []
    p = _require(path)
    seen: dict[str, int] = {}
    for n, r in read_json_lines(p, "annotation"):
        try:
            row = _qvh_row(r, require_text)
        except RowError as e:
            raise UserError(f"{p}:{n}: {e}") from None
        key = str(row["qid"])
        if key in seen:
            raise UserError(f"{p}:{n}: duplicate qid {row['qid']} (first on line {seen[key]})")
        seen[key] = n
        rows.append(row)
    return rows


def read_charades_durations(csv_path) -> dict[str, float]:
    """``Charades_v1_{train,test}.csv``: columns ``id`` and ``length`` (seconds)."""
    out = {}
    with open(_require(csv_path), newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            if row.get("id") and row.get("length"):
                try:
                    out[row["id"]] = finite(float(row["length"]), "length")
                except (ValueError, RowError):
                    raise UserError(f"{csv_path}:{n}: length is not a number") from None
    return out


def load_charades_sta(path, durations: dict | str | None = None) -> list[dict]:
    """``<vid> <start> <end>##<sentence>`` lines; ``qid`` = 0-based index among the non-empty
    lines (the order of the file). Ends past a known duration are clipped to it."""
    if isinstance(durations, (str, Path)):
        durations = read_charades_durations(durations)
    durations = durations or {}
    rows = []
    p = _require(path)
    for n, line in text_lines(p):
        line = line.strip()
        if not line:
            continue
        if "##" not in line:
            raise UserError(f"{p}:{n}: expected '<vid> <start> <end>##<sentence>'")
        head, sentence = line.split("##", 1)
        parts = head.split()
        if len(parts) != 3:
            raise UserError(f"{p}:{n}: expected '<vid> <start> <end>' before '##'")
        vid = parts[0]
        try:
            s, e = check_window([float(parts[1]), float(parts[2])], "window", False)
        except ValueError as exc:
            msg = str(exc) if isinstance(exc, RowError) else "start/end are not numbers"
            raise UserError(f"{p}:{n}: {msg}") from None
        dur = durations.get(vid)
        if dur is not None:
            e = min(e, dur)
            s = min(s, e)
        rows.append(
            {
                "qid": len(rows),
                "query": sentence.strip(),
                "vid": vid,
                "duration": dur,
                "relevant_windows": [[s, e]],
            }
        )
    if not rows:
        raise UserError(f"{p}: no annotation lines (empty file)")
    return rows


def _didemo_times(r: dict) -> list[tuple[int, int]]:
    times = r.get("times")
    if not isinstance(times, list) or not times:
        raise RowError("times must be a non-empty list of [start_segment, end_segment]")
    out = []
    for t in times:
        if (
            not isinstance(t, list)
            or len(t) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in t)
        ):
            raise RowError(f"times entry {json.dumps(t)} is not [start_segment, end_segment]")
        a, b = t
        if not 0 <= a <= b <= DIDEMO_SEGMENTS - 1:
            raise RowError(f"times entry {json.dumps(t)} is not a moment of segments 0..5")
        out.append((a, b))
    return out


def load_didemo_moments(path) -> list[dict]:
    records = read_didemo_records(_require(path))
    rows = []
    seen: dict[str, int] = {}
    for k, r in enumerate(records):
        where = f"{path}: record {k}"
        try:
            if not isinstance(r, dict):
                raise RowError("expected a JSON object")
            qid = check_qid(r, "annotation_id")
            for key in ("description", "video"):
                if not isinstance(r.get(key), str) or not r.get(key):
                    raise RowError(f"missing or empty field {key!r}")
            times = _didemo_times(r)
            nseg = r.get("num_segments", DIDEMO_SEGMENTS)
            if isinstance(nseg, bool) or not isinstance(nseg, int) or not 1 <= nseg <= 6:
                raise RowError(f"num_segments must be 1..6, not {json.dumps(nseg)}")
        except RowError as e:
            aid = r.get("annotation_id") if isinstance(r, dict) else None
            named = f" (annotation_id {aid})" if aid is not None else ""
            raise UserError(f"{where}{named}: {e}") from None
        if str(qid) in seen:
            raise UserError(
                f"{where}: duplicate annotation_id {qid} (first in record {seen[str(qid)]})"
            )
        seen[str(qid)] = k
        windows = [[DIDEMO_SEGMENT * s, DIDEMO_SEGMENT * (e + 1)] for s, e in times]
        counts = Counter(times)
        consensus = max(times, key=lambda t: (counts[t], -times.index(t)))
        rows.append(
            {
                "qid": qid,
                "query": r["description"],
                "vid": r["video"],
                "duration": DIDEMO_SEGMENT * nseg,
                "relevant_windows": [
                    [DIDEMO_SEGMENT * consensus[0], DIDEMO_SEGMENT * (consensus[1] + 1)]
                ],
                "annotator_windows": windows,
                "times": [list(t) for t in times],
                "num_segments": nseg,
            }
        )
    if not rows:
        raise UserError(f"{path}: no DiDeMo records (empty list)")
    return rows


LOADERS = {
    "qvhighlights": load_qvhighlights,
    "jsonl": load_qvhighlights,
    "synth": load_qvhighlights,
    "charades": load_charades_sta,
    "didemo": load_didemo_moments,
}


def load_moments(path, fmt: str = "qvhighlights", **kwargs) -> list[dict]:
    if fmt not in LOADERS:
        raise UserError(
            f"unknown moment annotation format {fmt!r}; choose one of {sorted(LOADERS)}"
        )
    return LOADERS[fmt](path, **kwargs)


def detect_format(path) -> str:
    """``didemo`` (a JSON list), ``qvhighlights`` (JSON lines) or ``charades`` (``##`` lines),
    from the first non-blank character / line of the file."""
    p = _require(path)
    with open(p, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace")  # the readers name bad bytes
    text = head.lstrip()
    if not text:
        raise UserError(f"{p}: empty annotation file")
    if text[0] == "[":
        return "didemo"
    if text[0] == "{":
        return "qvhighlights"
    if "##" in text.splitlines()[0]:
        return "charades"
    raise UserError(
        f"{p}: cannot tell the annotation format (not a DiDeMo JSON list, QVHighlights JSON "
        f"lines or Charades-STA '<vid> <start> <end>##<sentence>' lines); pass --protocol"
    )


def find_video(video_dir, row: dict) -> str | None:
    """The video file of a row (see ``resolve_video``), None when there is none."""
    if row.get("video"):
        p = Path(row["video"])
        if not p.is_absolute() and video_dir is not None:
            p = Path(video_dir) / p
        return str(p) if p.is_file() else None
    base = Path(video_dir or ".") / str(row["vid"])
    if base.is_file():
        return str(base)
    for ext in VIDEO_EXTS:
        for cand in (base.with_name(base.name + ext), base.with_suffix(ext)):
            if cand.is_file():
                return str(cand)
    return None


def resolve_video(video_dir, row: dict) -> str:
    """The video file of a row: its ``video`` field, else ``video_dir/<vid>`` with or without a
    known extension (a re-encoded ``.mp4`` copy is accepted). DiDeMo splits go through
    ``datasets.didemo.resolve_didemo_videos`` instead (names that must stay distinct)."""
    found = find_video(video_dir, row)
    if found is None:
        if row.get("video"):
            p = Path(row["video"])
            return str(p if p.is_absolute() or video_dir is None else Path(video_dir) / p)
        raise UserError(f"no video file for {row['vid']!r} under {video_dir}")
    return found


def video_paths(rows: list[dict], video_dir, fmt: str) -> dict[str, str | None]:
    """``{vid: path or None (missing)}`` for the rows of a split; DiDeMo names are resolved as a
    whole (two names that would read one file are refused)."""
    vids = list(dict.fromkeys(r["vid"] for r in rows))
    if fmt == "didemo" and not any(r.get("video") for r in rows):
        paths = resolve_didemo_videos(video_dir, vids)
        return {v: (p if os.path.isfile(p) else None) for v, p in paths.items()}
    first = {}
    for r in rows:
        first.setdefault(r["vid"], r)
    return {v: find_video(video_dir, first[v]) for v in vids}


def relevant_clip_ids(row: dict, clip_len: float, num_clips: int) -> list[int]:
    """Clip ids of the row (its own field, else the clips overlapping its windows), < num_clips."""
    if row.get("relevant_clip_ids"):
        return [int(c) for c in row["relevant_clip_ids"] if int(c) < num_clips]
    ids: set[int] = set()
    for s, e in row.get("relevant_windows", []):
        ids.update(window_clips(s, e, clip_len))
    return sorted(i for i in ids if 0 <= i < num_clips)


def window_clips(start: float, end: float, clip_len: float) -> range:
    """Clip ids overlapping the window ``[start, end]`` (at least the one holding ``start``)."""
    a = int(start // clip_len)
    b = int(-(-end // clip_len))  # ceil
    return range(a, max(a + 1, b))


def sample_saliency_pairs(
    row: dict, clip_len: float, num_clips: int, rng: random.Random, n: int = 1
) -> tuple[list[int], list[int]]:
    """Moment-DETR's (pos, neg) clip indices: a hard pair (the relevant clip with the highest /
    lowest summed annotator score) + an easy pair (a random relevant clip / a random clip outside
    the relevant ones; the hard pair again when too few are outside). Without saliency scores:
    random clips inside the windows as positives and outside as negatives."""
    rel = relevant_clip_ids(row, clip_len, num_clips)
    if not rel:
        rel = [rng.randrange(num_clips)]
    outside = sorted(set(range(num_clips)) - set(rel))
    scores = row.get("saliency_scores")
    if scores and row.get("relevant_clip_ids"):
        pairs = [
            (int(c), sum(s)) for c, s in zip(row["relevant_clip_ids"], scores) if int(c) < num_clips
        ]
        if pairs:
            order = sorted(range(len(pairs)), key=lambda i: pairs[i][1])
            hard_pos = [pairs[i][0] for i in order[-n:]]
            hard_neg = [pairs[i][0] for i in order[:n]]
            if len(outside) < n:  # moments cover (nearly) the whole video: reuse the hard pair
                return hard_pos + hard_pos, hard_neg + hard_neg
            easy_pos = [rng.choice(rel) for _ in range(n)]
            return hard_pos + easy_pos, hard_neg + rng.sample(outside, n)
    pos = [rng.choice(rel) for _ in range(2 * n)]
    neg = [rng.choice(outside) for _ in range(2 * n)] if outside else list(pos)
    return pos, neg


def moment_clip_captions(
    rows: list[dict],
    clip_len: float = 2.0,
    context: float = 1.0,
    split: str | None = None,
    video_dir=None,
) -> list[dict]:
    """``captions.jsonl`` lines that teach a retrieval model the per-clip features of a moment
    head: for every clip of every relevant window of every row, ``{"video", "caption", "start",
    "end"}`` with the clip ``[i clip_len, (i + 1) clip_len]`` widened by ``context`` seconds each
    side (clamped at 0 and at the duration), the row's query as caption. A retrieval model
    trained on them (``configs/moments_synth_clips.yaml``) embeds the same windows that
    ``clip_features(aggregator=..., context=...)`` pools at feature time.

    Lines are ordered by row, window, clip; one gallery item per clip (``video_id``
    ``<vid>@<start>-<end>``)."""
    out = []
    for r in rows:
        video = resolve_video(video_dir, r) if video_dir is not None else r.get("video")
        if video is None:
            video = f"videos/{r['vid']}.mp4"
        dur = r.get("duration")
        for s, e in r.get("relevant_windows", []):
            for i in window_clips(s, e, clip_len):
                lo = max(0.0, i * clip_len - context)
                hi = (i + 1) * clip_len + context
                if dur is not None:
                    hi = min(hi, float(dur))
                line = {
                    "video": str(video),
                    "video_id": f"{r['vid']}@{lo:g}-{hi:g}",
                    "caption": r["query"],
                    "start": lo,
                    "end": hi,
                }
                if split is not None:
                    line["split"] = split
                out.append(line)
    return out
