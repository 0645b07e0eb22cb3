"""Reading a finished frozen-feature cache (format: ``cache_settings``): ``FeatureCache`` maps the
arrays lazily and returns ``VideoFeatures`` / ``TextFeatures`` batches for any rows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.train.cache_settings import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    encoder_fingerprint,
)


def remove_cache(path: str | os.PathLike) -> None:
    """Delete a cache directory built by :func:`build_cache` (refuses other directories)."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise UserError(f"{path} is not a feature cache (no {MANIFEST})")
    shutil.rmtree(path)


def _as_index(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    if isinstance(indices, slice):
        return np.arange(n, dtype=np.int64)[indices]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range 0..{n - 1}")
    return np.where(idx < 0, idx + n, idx)


def _gather(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a memmap, read in ascending order (sequential I/O), returned in ``idx`` order."""
    if idx.size == 0:
        return np.asarray(arr[:0])
    order = np.argsort(idx, kind="stable")
    rows = np.asarray(arr[idx[order]])
    out = np.empty_like(rows)
    out[order] = rows
    return out


class FeatureCache:
    """Read-only view of a finished cache. Arrays are memory-mapped lazily, so the object pickles
    cheaply into DataLoader workers (each worker maps the files itself)."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self.text_to_video = torch.from_numpy(
            np.array(self._array("text_to_video"), dtype=np.int64)
        )
        self._video_captions: list[list[int]] | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike, encoder=None, fingerprint: str | None = None
    ) -> FeatureCache:
        """Open the cache at ``path``. With ``encoder`` (or ``fingerprint``), refuse a cache built
        by another model (UserError)."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise UserError(
                f"{path} is not a feature cache (no {MANIFEST}); build it with `vr cache`"
            )
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{mpath}: unreadable manifest ({exc})") from exc
        if manifest.get("format") != FORMAT_NAME:
            raise UserError(f"{path} is not a feature cache (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: cache format version {manifest.get('format_version')} is not supported "
                f"(this version reads {FORMAT_VERSION}); rebuild it with `vr cache --overwrite`"
            )
        if manifest.get("status") != "complete":
            raise UserError(
                f"{path}: the cache build did not finish; rerun the same `vr cache` command to resume it"
            )
        if encoder is not None:
            fingerprint = encoder_fingerprint(encoder)
        if fingerprint is not None and fingerprint != manifest.get("fingerprint"):
            raise UserError(
                f"{path} was built with a different model (cache fingerprint "
                f"{manifest.get('fingerprint')!r}, encoder fingerprint {fingerprint!r}); "
                "rebuild the cache with this encoder or use the matching model"
            )
        return cls(path, manifest)

    def check_fingerprint(self, encoder_or_fingerprint) -> None:
        fp = encoder_or_fingerprint
        if not isinstance(fp, str):
            fp = encoder_fingerprint(fp)
        if fp != self.fingerprint:
            raise UserError(
                f"{self.path} was built with a different model ({self.fingerprint!r} != {fp!r})"
            )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = np.load(self.path / f"{name}.npy", mmap_mode="r")
            self._arrays[name] = arr
        return arr

    # -- metadata ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def encoder_spec(self) -> dict:
        return self.manifest.get("encoder_spec", {})

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def num_frames(self) -> int:
        return int(self.manifest["sampling"]["frames_per_video"])

    @property
    def num_videos(self) -> int:
        return int(self.manifest["counts"]["videos"])

    @property
    def num_texts(self) -> int:
        return int(self.manifest["counts"]["texts"])

    @property
    def patch_mode(self) -> str:
        return self.manifest["patches"]["mode"]

    @property
    def has_patches(self) -> bool:
        return self.patch_mode != "none"

    @property
    def has_words(self) -> bool:
        return bool(self.manifest["text"]["words"])

    @property
    def videos(self) -> list[dict]:
        return self.manifest["videos"]

    @property
    def video_ids(self) -> list[str]:
        return [v["id"] for v in self.manifest["videos"]]

    @property
    def video_paths(self) -> list[str]:
        return [v["path"] for v in self.manifest["videos"]]

    @property
    def captions(self) -> list[str]:
        return [c["text"] for c in self.manifest["captions"]]

    @property
    def failures(self) -> list[dict]:
        return self.manifest.get("failures", [])

    @property
    def failed(self) -> np.ndarray:
        return np.array(self._array("video_failed"), dtype=bool)

    @property
    def video_captions(self) -> list[list[int]]:
        """For each video, the indices of its captions."""
        if self._video_captions is None:
            caps: list[list[int]] = [[] for _ in range(self.num_videos)]
            for j, v in enumerate(self.text_to_video.tolist()):
                caps[v].append(j)
            self._video_captions = caps
        return self._video_captions

    def video_indices(self, split: str | None = None, include_failed: bool = False) -> np.ndarray:
        failed = self.failed
        keep = [
            i for i, v in enumerate(self.manifest["videos"])
            if (split is None or v.get("split") == split) and (include_failed or not failed[i])
        ]  # fmt: skip
        return np.asarray(keep, dtype=np.int64)

    def text_indices(self, split: str | None = None, include_failed: bool = False) -> np.ndarray:
        failed = self.failed
        t2v = self.text_to_video.numpy()
        keep = [
            j for j, c in enumerate(self.manifest["captions"])
            if (split is None or c.get("split") == split) and (include_failed or not failed[t2v[j]])
        ]  # fmt: skip
        return np.asarray(keep, dtype=np.int64)

    # -- features ---------------------------------------------------------------------------
    def video_features(self, indices=None, patches: bool | None = None) -> VideoFeatures:
        """fp32 ``VideoFeatures`` for ``indices`` (default: all videos). ``patches`` defaults to
        whatever the cache holds (top-k caches give ``[B,T,K,D]``, see :meth:`patch_indices`)."""
        idx = _as_index(indices, self.num_videos)
        frames = torch.from_numpy(_gather(self._array("video_frames"), idx).astype(np.float32))
        mask = torch.from_numpy(_gather(self._array("video_mask"), idx).astype(bool))
        want = self.has_patches if patches is None else bool(patches)
        if want and not self.has_patches:
            raise UserError(f"{self.path} holds no patch tokens; rebuild with --patches all|topk")
        pt = None
        if want:
            pt = torch.from_numpy(_gather(self._array("video_patches"), idx).astype(np.float32))
        return VideoFeatures(frames, mask, pt)

    def patch_indices(self, indices=None) -> torch.Tensor | None:
        """``[B,T,K]`` original patch positions of top-k tokens (None unless ``patches="topk"``)."""
        if self.patch_mode != "topk":
            return None
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_patch_index"), idx).astype(np.int64))

    def timestamps(self, indices=None) -> torch.Tensor:
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_timestamps"), idx).astype(np.float32))

    def durations(self, indices=None) -> torch.Tensor:
        idx = _as_index(indices, self.num_videos)
        return torch.from_numpy(_gather(self._array("video_duration"), idx).astype(np.float32))

    def text_features(self, indices=None, words: bool | None = None) -> TextFeatures:
        idx = _as_index(indices, self.num_texts)
        sentence = torch.from_numpy(_gather(self._array("text_sentence"), idx).astype(np.float32))
        want = self.has_words if words is None else bool(words)
        if want and not self.has_words:
            raise UserError(f"{self.path} holds no word features")
        if not want:
            return TextFeatures(sentence)
        w = torch.from_numpy(_gather(self._array("text_words"), idx).astype(np.float32))
        wm = torch.from_numpy(_gather(self._array("text_word_mask"), idx).astype(bool))
        return TextFeatures(sentence, w, wm)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, videos={self.num_videos}, texts={self.num_texts}, "
            f"T={self.num_frames}, D={self.embed_dim}, patches={self.patch_mode})"
        )
