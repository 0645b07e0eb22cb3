"""Retrieval datasets: frame sampling via ``load_frames`` (``FrameReader``), the train and eval
datasets, and their collate.

Training samples are one video with one caption: a random caption of the video each epoch
(CLIP4Clip's sampling *without* ``--expand_msrvtt_sentences``: ~9k samples per MSR-VTT epoch), or
every (video, caption) pair with ``expand_sentences`` (CLIP4Clip's published MSR-VTT command and
UCoFiA's ``train_msrvtt.sh``: 180k pairs per epoch; the ``configs/msrvtt_*.yaml`` recipes).
Evaluation samples are one video with *all* its captions, so text and video features are encoded
once each.

A video that is there but cannot be decoded never becomes a zero tensor: it is logged, recorded
(path, reason) in ``dataset.failures`` and in the batch's ``"failed"`` list, and then
- in training, another random video is drawn instead (the batch keeps its size, which
  all-gathering across processes needs);
- in evaluation, the video and its captions are dropped from the batch (collate filters ``None``).

Frames are decoded once per (path, window, frames, size) when ``cache_frames`` is on (in-memory,
per process) and/or ``frame_cache_dir`` is set (``.npz`` files shared between runs/processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from video_retrieval.datasets.captions_jsonl import RetrievalSplit
from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_savez

log = logging.getLogger(__name__)


def center_crop_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """[T,H,W,3] -> [T,size,size,3]: centre crop the short side's square, resize if needed."""
    t, h, w, _ = pixels.shape
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    out = pixels[:, y : y + s, x : x + s]
    if s != size:
        ten = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float()
        ten = torch.nn.functional.interpolate(
            ten, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = ten.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(out)


class FrameReader:
    """``load_frames`` + centre crop, with optional in-memory and on-disk (npz) caches."""

    def __init__(
        self,
        num_frames: int,
        frame_size: int,
        cache_frames: bool = False,
        cache_dir: str | None = None,
        backend: str = "auto",
        symmetric_window: bool = False,
    ):
        self.symmetric_window = symmetric_window
        self.num_frames = int(num_frames)
        self.frame_size = int(frame_size)
        self.cache_frames = cache_frames
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.backend = backend
        self._mem: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _disk_key(self, path: str, start, end) -> Path:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{start}|{end}|"
        key += f"{self.symmetric_window}|"
        key += f"{self.num_frames}|{self.frame_size}"
        return self.cache_dir / (hashlib.sha1(os.fsencode(key)).hexdigest()[:24] + ".npz")

    def read(self, path: str, start=None, end=None) -> tuple[np.ndarray, np.ndarray]:
        """(pixels uint8 [T,S,S,3], mask bool [T]); raises on a missing/undecodable video."""
        key = (path, start, end)
        if key in self._mem:
            return self._mem[key]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such video file: {path}")
        disk = self._disk_key(path, start, end) if self.cache_dir else None
        if disk is not None and disk.is_file():
            with np.load(disk) as z:
                pixels, mask = z["pixels"], z["mask"]
        else:
            from video_retrieval.media.decode import load_frames, probe_video

            if self.symmetric_window and start is None and end is None:
                # sample over [first frame centre, last frame centre]: segment midpoints are then
                # symmetric under time reversal (a reversed video yields the reversed frames)
                info = probe_video(path)
                half = 0.5 / info.fps if info.fps > 0 else 0.0
                if info.duration > 2 * half:
                    start, end = half, info.duration - half
            fr = load_frames(
                path,
                num_frames=self.num_frames,
                start=start,
                end=end,
                size=self.frame_size,
                backend=self.backend,
            )
            pixels = center_crop_square(np.asarray(fr.pixels), self.frame_size)
            mask = np.asarray(fr.mask, dtype=bool)
            if pixels.shape[0] != self.num_frames or not mask.any():
                raise ValueError(f"decoder returned {pixels.shape[0]} frames, mask {mask.sum()}")
            if disk is not None:
                atomic_savez(disk, pixels=pixels, mask=mask)
        if self.cache_frames:
            self._mem[key] = (pixels, mask)
        return pixels, mask


class _Base(Dataset):
    def __init__(self, split: RetrievalSplit, reader: FrameReader):
        self.split = split
        self.reader = reader
        self.failures: list[tuple[str, str]] = []

    def _frames(self, v: int):
        item = self.split.videos[v]
        try:
            return self.reader.read(item.path, item.start, item.end), None
        except Exception as exc:  # noqa: BLE001 - any decode failure is reported, not raised
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("skipping video %s (%s)", item.path, reason)
            self.failures.append((item.path, reason))
            return None, (item.path, reason)


class RetrievalTrainDataset(_Base):
    """One (video, caption) per item; failed videos are replaced by another random video."""

    def __init__(
        self,
        split: RetrievalSplit,
        reader: FrameReader,
        expand_sentences: bool = False,
        max_retries: int = 10,
    ):
        super().__init__(split, reader)
        self.expand = expand_sentences
        self.max_retries = max_retries
        self.bad: set[int] = set()
        self.with_caps = [v for v in range(len(split.videos)) if split.captions_of(v)]
        if not self.with_caps:
            raise UserError(f"training split {split.name!r} has no captioned video")

    def __len__(self) -> int:
        return len(self.split.captions) if self.expand else len(self.with_caps)

    def __getitem__(self, i: int):
        if self.expand:
            c = i
            v = self.split.caption_video[c]
        else:
            v = self.with_caps[i]
            c = None
        failed = []
        for _ in range(self.max_retries + 1):
            got, fail = (None, None) if v in self.bad else self._frames(v)
            if got is not None:
                break
            if fail is not None:
                failed.append(fail)
                self.bad.add(v)
            v = self.with_caps[int(torch.randint(len(self.with_caps), ()).item())]
            c = None
        else:
            raise RuntimeError(f"could not decode any of {self.max_retries + 1} training videos")
        if c is None:
            caps = self.split.captions_of(v)
            c = caps[int(torch.randint(len(caps), ()).item())]
        pixels, mask = got
        return {
            "frames": torch.from_numpy(pixels),
            "mask": torch.from_numpy(mask),
            "caption": self.split.captions[c],
            "video_index": v,
            "failed": failed,
        }


class RetrievalEvalDataset(_Base):
    """One video with all its captions per item; ``None`` (dropped) when it cannot be decoded."""

    def __len__(self) -> int:
        return len(self.split.videos)

    def __getitem__(self, v: int):
        got, fail = self._frames(v)
        caps = self.split.captions_of(v)
        if got is None:
            return {"failed": [fail], "video_index": v}
        pixels, mask = got
        return {
            "frames": torch.from_numpy(pixels),
            "mask": torch.from_numpy(mask),
            "captions": [self.split.captions[c] for c in caps],
            "caption_ids": caps,
            "video_index": v,
            "failed": [],
        }


def collate_retrieval(items: list[dict]) -> dict:
    """Stack frames of decoded items; drop failed ones (their failures stay in ``"failed"``).

    Output: ``frames`` uint8 [B,T,S,S,3], ``mask`` bool [B,T], ``video_index`` long [B],
    ``failed`` list of (path, reason); training: ``captions`` list[B]; evaluation: ``captions``
    (all captions, flat), ``caption_ids`` long [Nc], ``caption_video`` long [Nc] (row in batch).
    """
    failed = [f for it in items for f in it.get("failed", [])]
    ok = [it for it in items if "frames" in it]
    out: dict = {"failed": failed}
    if not ok:
        out.update(frames=None, mask=None, video_index=torch.zeros(0, dtype=torch.long))
        out["captions"] = []
        return out
    out["frames"] = torch.stack([it["frames"] for it in ok])
    out["mask"] = torch.stack([it["mask"] for it in ok])
    out["video_index"] = torch.tensor([it["video_index"] for it in ok], dtype=torch.long)
    if "caption" in ok[0]:
        out["captions"] = [it["caption"] for it in ok]
    else:
        out["captions"] = [c for it in ok for c in it["captions"]]
        out["caption_ids"] = torch.tensor([c for it in ok for c in it["caption_ids"]])
        out["caption_video"] = torch.tensor(
            [b for b, it in enumerate(ok) for _ in it["captions"]], dtype=torch.long
        )
    return out
