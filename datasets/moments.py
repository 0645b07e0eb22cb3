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
import random
from collections import Counter
from pathlib import Path

from video_retrieval.errors import UserError

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".3gp", ".mpg")
DIDEMO_SEGMENT = 5.0


def _require(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: annotation file not found")
    return p


def load_qvhighlights(path) -> list[dict]:
    rows = []
    p = _require(path)
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            for key in ("qid", "query", "vid"):
                if key not in r:
                    raise UserError(f"{p}:{n}: missing field {key!r}")
            r.setdefault("relevant_windows", [])
            r["relevant_windows"] = [[float(s), float(e)] for s, e in r["relevant_windows"]]
            r["duration"] = float(r["duration"]) if r.get("duration") is not None else None
            rows.append(r)
    return rows


def read_charades_durations(csv_path) -> dict[str, float]:
    """``Charades_v1_{train,test}.csv``: columns ``id`` and ``length`` (seconds)."""
    out = {}
    with open(_require(csv_path), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("id") and row.get("length"):
                out[row["id"]] = float(row["length"])
    return out


def load_charades_sta(path, durations: dict | str | None = None) -> list[dict]:
    if isinstance(durations, (str, Path)):
        durations = read_charades_durations(durations)
    durations = durations or {}
    rows = []
    p = _require(path)
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
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
                s, e = float(parts[1]), float(parts[2])
            except ValueError:
                raise UserError(f"{p}:{n}: start/end are not numbers") from None
            dur = durations.get(vid)
            if dur is not None:
                e = min(e, dur)
            rows.append(
                {
                    "qid": len(rows),
                    "query": sentence.strip(),
                    "vid": vid,
                    "duration": dur,
                    "relevant_windows": [[s, e]],
                }
            )
    return rows


def load_didemo_moments(path) -> list[dict]:
    with open(_require(path), encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a list of DiDeMo records")
    rows = []
    for r in records:
        times = [tuple(int(x) for x in t) for t in r.get("times", [])]
        nseg = int(r.get("num_segments", 6))
        windows = [[DIDEMO_SEGMENT * s, DIDEMO_SEGMENT * (e + 1)] for s, e in times]
        counts = Counter(times)
        consensus = max(times, key=lambda t: (counts[t], -times.index(t))) if times else None
        rows.append(
            {
                "qid": int(r["annotation_id"]),
                "query": r["description"],
                "vid": r["video"],
                "duration": DIDEMO_SEGMENT * nseg,
                "relevant_windows": (
                    [[DIDEMO_SEGMENT * consensus[0], DIDEMO_SEGMENT * (consensus[1] + 1)]]
                    if consensus
                    else []
                ),
                "annotator_windows": windows,
                "times": [list(t) for t in times],
                "num_segments": nseg,
            }
        )
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


def resolve_video(video_dir, row: dict) -> str:
    """The video file of a row: its ``video`` field, else ``video_dir/<vid>`` with or without a
    known extension (DiDeMo names carry theirs; a re-encoded ``.mp4`` copy is accepted)."""
    if row.get("video"):
        p = Path(row["video"])
        if not p.is_absolute() and video_dir is not None:
            p = Path(video_dir) / p
        return str(p)
    base = Path(video_dir or ".") / str(row["vid"])
    if base.exists():
        return str(base)
    for ext in VIDEO_EXTS:
        for cand in (base.with_name(base.name + ext), base.with_suffix(ext)):
            if cand.exists():
                return str(cand)
    raise UserError(f"no video file for {row['vid']!r} under {video_dir}")


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
