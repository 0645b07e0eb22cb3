"""DiDeMo paragraph-to-video retrieval (CLIP4Clip protocol).

``{train,val,test}_data.json`` (LocalizingMoments): a list of ``{video, description, times, ...}``.
Per video, the paragraph is its descriptions joined with one space in file order; the moment
``times`` are ignored and every video is read over 0..30 s (DiDeMo annotations stop at 30 s).
Video names include their extension (``.mov``, ``.3gp``, ``.m4v`` ...); when that file is absent an
``.mp4`` with the same stem is used (a common re-encoded copy).
"""

from __future__ import annotations

import json
from pathlib import Path

from video_retrieval.datasets.captions_jsonl import RetrievalSplit, VideoItem, _require

from video_retrieval.errors import UserError

DIDEMO_END = 30.0


def didemo_video_path(video_dir: str | Path, name: str) -> str:
    p = Path(video_dir) / name
    if p.exists():
        return str(p)
    alt = p.with_suffix(".mp4")
    return str(alt if alt.exists() else p)


def load_didemo(
    data_json: str | Path,
    video_dir: str | Path,
    list_file: str | Path | None = None,
    start: float = 0.0,
    end: float = DIDEMO_END,
) -> RetrievalSplit:
    with open(_require(Path(data_json), "DiDeMo json"), encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise UserError(f"{data_json}: expected a list of DiDeMo records")
    paragraphs: dict[str, list[str]] = {}
    for r in records:
        try:
            paragraphs.setdefault(r["video"], []).append(str(r["description"]).strip())
        except (KeyError, TypeError):
            raise UserError(f"{data_json}: record without video/description: {r!r}") from None
    names = list(paragraphs)
    if list_file is not None:
        with open(_require(Path(list_file), "DiDeMo list file"), encoding="utf-8") as f:
            allowed = {line.strip() for line in f if line.strip()}
        names = [n for n in names if n in allowed]
    out = RetrievalSplit(name=Path(data_json).stem)
    for n in names:
        out.videos.append(VideoItem(Path(n).stem, didemo_video_path(video_dir, n), start, end))
        out.captions.append(" ".join(paragraphs[n]))
        out.caption_video.append(len(out.videos) - 1)
    return out
