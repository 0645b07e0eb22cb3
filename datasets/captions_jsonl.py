"""Generic retrieval annotations: ``captions.jsonl`` and the split container all loaders return.

One JSON object per line: ``{"video": "videos/<id>.mp4", "caption": "...", "split": "train"}``
(optional ``"start"``/``"end"`` seconds, optional ``"video_id"``). ``video`` is relative to the jsonl
file's folder (or ``video_root``) unless absolute. Lines of the same video share one gallery item;
its captions keep file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from video_retrieval.datasets.text_files import json_lines

from video_retrieval.errors import UserError


@dataclass
class VideoItem:
    video_id: str
    path: str
    start: float | None = None  # seconds; None = whole video
    end: float | None = None


@dataclass
class RetrievalSplit:
    """Videos (the gallery) and captions (the queries); ``caption_video[i]`` indexes ``videos``."""

    videos: list[VideoItem] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_video: list[int] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self._by_video: list[list[int]] | None = None

    def captions_of(self, video_index: int) -> list[int]:
        if self._by_video is None or len(self._by_video) != len(self.videos):
            by: list[list[int]] = [[] for _ in self.videos]
            for c, v in enumerate(self.caption_video):
                by[v].append(c)
            self._by_video = by
        return self._by_video[video_index]

    def index_of(self, video_id: str) -> int:
        for i, v in enumerate(self.videos):
            if v.video_id == video_id:
                return i
        raise KeyError(video_id)

    def subset(self, max_videos: int | None) -> RetrievalSplit:
        """The first ``max_videos`` videos with their captions (for tiny debug runs)."""
        if max_videos is None or max_videos >= len(self.videos):
            return self
        keep = {i: i for i in range(max_videos)}
        out = RetrievalSplit(self.videos[:max_videos], name=self.name)
        for c, v in zip(self.captions, self.caption_video):
            if v in keep:
                out.captions.append(c)
                out.caption_video.append(v)
        return out

    def without(self, drop) -> RetrievalSplit:
        """The split without the videos at indices ``drop`` (and their captions), order kept."""
        drop = set(drop)
        new_index: dict[int, int] = {}
        out = RetrievalSplit(name=self.name)
        for i, v in enumerate(self.videos):
            if i not in drop:
                new_index[i] = len(out.videos)
                out.videos.append(v)
        for c, v in zip(self.captions, self.caption_video):
            if v in new_index:
                out.captions.append(c)
                out.caption_video.append(new_index[v])
        return out

    def __len__(self) -> int:
        return len(self.videos)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def load_captions_jsonl(
    path: str | Path, split: str | None = None, video_root: str | Path | None = None
) -> RetrievalSplit:
    path = _require(Path(path), "captions file")
    root = Path(video_root) if video_root is not None else path.parent
    out = RetrievalSplit(name=split or path.stem)
    index: dict[tuple, int] = {}
    for lineno, rec in json_lines(path):
        try:
            video, caption = rec["video"], rec["caption"]
        except (KeyError, TypeError) as exc:
            raise UserError(f"{path}:{lineno}: bad captions record ({exc})") from None
        if split is not None and rec.get("split") != split:
            continue
        vpath = Path(video)
        if not vpath.is_absolute():
            vpath = root / vpath
        start, end = rec.get("start"), rec.get("end")
        key = (str(vpath), start, end)
        if key not in index:
            index[key] = len(out.videos)
            vid = rec.get("video_id") or vpath.stem
            out.videos.append(VideoItem(vid, str(vpath), start, end))
        out.captions.append(str(caption).strip())
        out.caption_video.append(index[key])
    return out
