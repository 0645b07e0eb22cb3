"""DiDeMo paragraph-to-video retrieval (CLIP4Clip protocol) and DiDeMo video file names.

``{train,val,test}_data.json`` (LocalizingMoments): a list of ``{video, description, times, ...}``.
Per video, the paragraph is its descriptions joined with one space in file order; the moment
``times`` are ignored and every video is read over 0..30 s (DiDeMo annotations stop at 30 s).

Video names (``resolve_didemo_videos``): the annotated name *with* its extension is the video's id,
as in CLIP4Clip, because the names are not distinct without it: val and test each hold 27 pairs
``X.mov`` / ``X.mp4`` that are different videos, and some names end in ``.`` (``..._17dce1d555.``).
The file of a name is the first of these that exists in the video folder:

1. the name itself (``X.mov``, ``X.``);
2. a re-encoded copy that keeps the whole name: ``X.mov.mp4`` (``X..mp4`` for ``X.``);
3. ``<stem>.mp4`` (``X.mp4``; the stem drops only the last extension), a common re-encoding.

Two names that would read one file (``X.mov`` falling back to ``X.mp4`` while ``X.mp4`` is itself
annotated) are refused with the list (``UserError``), never merged into one gallery item. A name with none of these files keeps ``<video_dir>/<name>`` as its path and is
reported by the missing-video checks (``vr data check``, the data modules' setup).
"""

from __future__ import annotations

import os
from pathlib import Path

from video_retrieval.datasets.captions_jsonl import RetrievalSplit, VideoItem, _require
from video_retrieval.datasets.text_files import read_json_file

from video_retrieval.errors import UserError

DIDEMO_END = 30.0


def name_stem(name: str) -> str:
    """``X.mov`` -> ``X``; ``X.`` -> ``X``; ``X`` -> ``X`` (only the last extension goes)."""
    base, dot, _ext = name.rpartition(".")
    return base if dot and base else name


def didemo_candidates(name: str) -> list[str]:
    """File names tried for an annotated video name, in order (see the module docstring)."""
    out = [name, name + ".mp4"]
    stem_copy = name_stem(name) + ".mp4"
    if stem_copy not in out:
        out.append(stem_copy)
    return out


def _listing(video_dir: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(video_dir) if e.is_file()}
    except OSError:  # missing folder: every video is missing
        return set()


def _file_of(name: str, present: set[str]) -> str | None:
    return next((c for c in didemo_candidates(name) if c in present), None)


def didemo_collisions(video_dir, names) -> dict[str, list[str]]:
    """``{file: [names]}`` for every file that more than one annotated name would read."""
    present = _listing(Path(video_dir) if video_dir is not None else Path("."))
    by_file: dict[str, list[str]] = {}
    for n in dict.fromkeys(names):
        f = _file_of(n, present)
        if f is not None:
            by_file.setdefault(f, []).append(n)
    return {f: ns for f, ns in by_file.items() if len(ns) > 1}


def resolve_didemo_videos(video_dir: str | Path | None, names) -> dict[str, str]:
    """``{name: path}`` for annotated DiDeMo names (one folder listing, no per-file stat).

    Raises ``UserError`` listing every group of names that would read the same file."""
    vdir = Path(video_dir) if video_dir is not None else Path(".")
    present = _listing(vdir)
    files = {n: _file_of(n, present) for n in dict.fromkeys(names)}
    by_file: dict[str, list[str]] = {}
    for n, f in files.items():
        if f is not None:
            by_file.setdefault(f, []).append(n)
    clashes = {f: ns for f, ns in by_file.items() if len(ns) > 1}
    if clashes:
        raise UserError(didemo_collision_message(vdir, clashes))
    return {n: str(vdir / (f if f is not None else n)) for n, f in files.items()}


def didemo_collision_message(vdir: Path, clashes: dict[str, list[str]]) -> str:
    items = sorted(clashes.items())
    shown = "; ".join(f"{' and '.join(ns)} -> {f}" for f, ns in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return (
        f"{len(items)} file(s) in {vdir} would stand for more than one annotated DiDeMo video: "
        f"{shown}{more}; these are different videos: give each its own file (its original name, "
        f"or a re-encoded copy named <name>.mp4, e.g. X.mov.mp4)"
    )


def didemo_video_path(video_dir: str | Path, name: str) -> str:
    """The file of one name, ignoring the other annotated names (prefer ``resolve_didemo_videos``
    for a whole split: it refuses names that would share a file)."""
    return resolve_didemo_videos(video_dir, [name])[name]


def read_didemo_records(data_json: str | Path) -> list[dict]:
    records = read_json_file(_require(Path(data_json), "DiDeMo json"), str(data_json))
    if not isinstance(records, list):
        raise UserError(f"{data_json}: expected a list of DiDeMo records")
    return records


def load_didemo(
    data_json: str | Path,
    video_dir: str | Path,
    list_file: str | Path | None = None,
    start: float = 0.0,
    end: float = DIDEMO_END,
) -> RetrievalSplit:
    records = read_didemo_records(data_json)
    paragraphs: dict[str, list[str]] = {}
    for k, r in enumerate(records):
        try:
            video, desc = r["video"], r["description"]
        except (KeyError, TypeError):
            raise UserError(f"{data_json}: record {k} has no video/description: {r!r}") from None
        if not isinstance(video, str) or not video:
            raise UserError(f"{data_json}: record {k}: 'video' must be a file name, not {video!r}")
        paragraphs.setdefault(video, []).append(str(desc).strip())
    names = list(paragraphs)
    if list_file is not None:
        with open(_require(Path(list_file), "DiDeMo list file"), encoding="utf-8") as f:
            allowed = {line.strip() for line in f if line.strip()}
        names = [n for n in names if n in allowed]
    paths = resolve_didemo_videos(video_dir, names)
    out = RetrievalSplit(name=Path(data_json).stem)
    for n in names:
        out.videos.append(VideoItem(n, paths[n], start, end))
        out.captions.append(" ".join(paragraphs[n]))
        out.caption_video.append(len(out.videos) - 1)
    return out
