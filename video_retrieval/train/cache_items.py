"""What goes into a frozen-feature cache: the videos (and captions) of a folder, a list file, a
``captions.jsonl`` file or a dataset split (MSR-VTT, DiDeMo, the synthetic world), as
``VideoItem`` / ``CaptionItem`` lists for ``cache_build.build_cache``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.media.files import VIDEO_EXTENSIONS, is_video_name
from video_retrieval.train.cache_settings import CaptionItem, VideoItem


def _unique_ids(paths: list[Path], root: Path | None) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    ids = []
    for p in paths:
        try:
            rel = p.relative_to(root) if root is not None else p
        except ValueError:
            rel = p
        ids.append(str(rel.with_suffix("")))
    if len(set(ids)) != len(ids):
        ids = [str(p.with_suffix("")) for p in paths]
    return ids


def videos_from_list_or_dir(path: str | os.PathLike) -> list[VideoItem]:
    """Videos of a folder (recursively, by extension, sorted) or of a list file (one path per
    line, relative paths are relative to the list file; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_video_name(p))
        if not files:
            raise UserError(f"{path}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        root = path
    else:
        if is_video_name(path):
            files = [path]
        else:
            files = []
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line)
                files.append(p if p.is_absolute() else path.parent / p)
            if not files:
                raise UserError(f"{path}: the list names no videos")
        root = path.parent
    return [VideoItem(id=i, path=str(p)) for i, p in zip(_unique_ids(files, root), files)]


def items_from_captions_jsonl(
    path: str | os.PathLike, split: str | None = None
) -> tuple[list[VideoItem], list[CaptionItem]]:
    """Videos (in order of first mention) and captions of a ``captions.jsonl`` file with rows
    ``{"video": path relative to the file, "caption": str, "split": str (optional)}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such captions file")
    videos: list[VideoItem] = []
    index: dict[str, int] = {}
    captions: list[CaptionItem] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            video, caption = row["video"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: expected {{'video', 'caption'}} JSON ({exc})") from exc
        row_split = row.get("split")
        if split is not None and row_split != split:
            continue
        if not str(caption).strip():
            raise UserError(f"{path}:{n}: empty caption")
        vpath = Path(video)
        vpath = vpath if vpath.is_absolute() else path.parent / vpath
        key = str(vpath)
        if key not in index:
            index[key] = len(videos)
            videos.append(VideoItem(id=Path(video).stem, path=key, split=row_split))
        captions.append(CaptionItem(text=str(caption), video_index=index[key], split=row_split))
    if not captions:
        raise UserError(f"{path}: no captions" + (f" in split {split!r}" if split else ""))
    ids = _unique_ids([Path(v.path) for v in videos], path.parent)
    for v, i in zip(videos, ids):
        v.id = i
    return videos, captions


def items_from_retrieval_split(split, split_name: str | None = None):
    """Cache inputs from a training-side ``RetrievalSplit`` (``datasets.captions_jsonl``), i.e. the
    videos/windows and captions that ``RetrievalDataModule.load_split`` gives for MSR-VTT, DiDeMo,
    captions.jsonl or the synthetic world, in the same order (cache index == split index)."""
    name = split_name if split_name is not None else (getattr(split, "name", "") or None)
    videos = [
        VideoItem(id=v.video_id, path=str(v.path), split=name, start=v.start, end=v.end)
        for v in split.videos
    ]
    captions = [
        CaptionItem(text=str(c), video_index=int(v), split=name)
        for c, v in zip(split.captions, split.caption_video)
    ]
    return videos, captions


def items_from_dataset(dataset: str, root: str, which: str, **datamodule_kwargs):
    """``RetrievalDataModule(dataset, root, ...).load_split(which)`` as cache inputs."""
    from video_retrieval.train.retrieval_data import RetrievalDataModule

    dm = RetrievalDataModule(dataset=dataset, root=root, **datamodule_kwargs)
    return items_from_retrieval_split(dm.load_split(which), which)
