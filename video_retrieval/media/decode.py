"""Video decoding and frame sampling: ``load_frames`` and ``probe_video``.

Time axis
    Times are seconds from the first frame's presentation timestamp (the first frame is at 0.0).
    Frame ``i`` is presented from ``times[i]`` until ``times[i+1]`` (the last one for its packet
    duration); ``duration`` is the end of the last frame. Times are the true PTS of the file, so
    variable-frame-rate files get their real timestamps. "The frame presented at time t" is the
    last frame whose PTS <= t.

Sampling (identical for both backends: indices are chosen from one PyAV packet scan)
    ``num_frames=T``: [start, end] (default [0, duration]) is cut into T equal segments and the
    frame presented at the midpoint of each segment is taken.
    ``fps=F``: sample times ``start + (k + 0.5) / F`` for every k with that time < end, i.e. the
    midpoint of each 1/F-second step (a window too short for any such time gets one sample at
    its own midpoint).
    Neither: every frame whose PTS lies in [start, end).
    Midpoints at or beyond ``duration`` (an ``end`` past the video) have no frame.

Padding
    Sample times that fall on a frame already taken (``num_frames`` larger than the number of
    frames in the range, ``fps`` above the video rate) or past the end do not produce a second copy:
    the returned frames are the distinct frames in time order, followed by padding that repeats the
    last real frame (and its timestamp) with ``mask`` False. So the length is always T (or the
    number of fps sample times) and aggregators never over-weight repeated frames. At least one
    frame is real: a range with no sample time inside the video returns the frame presented at
    ``start``.

Backends
    ``auto``: decord ``get_batch`` of the chosen indices, then PyAV seek-and-decode when decord
    fails in any way, disagrees with the packet scan (frame count, timestamps, shape), or the file
    is one decord is known to get wrong: rotated (decord mangles the pixels), open-GOP (leading
    pictures; decord returns frames several positions off after a seek) or in a container other
    than MP4/MOV, Matroska/WebM and AVI (MPEG-TS: frames off by the start offset). ``pyav``
    forces PyAV; ``decord`` forces decord and raises VideoDecodeError instead of falling back
    (also for those known-bad files, rather than returning wrong frames). Both backends return
    identical pixels on 8-bit files (tested: H.264, HEVC, VP9, MPEG-4, MJPEG); on 10-bit files
    their RGB conversions differ slightly in textured areas (flat colours agree).

Damaged files
    The packet scan keeps only the packets really present, so a truncated file behaves as the
    shorter video it still holds (``duration``/``num_frames`` describe the decodable part, not the
    header). Frames that fail to decode are dropped like missing frames. A file with no decodable
    frame raises ``VideoDecodeError(path, reason)``; so do missing paths, folders, empty files,
    non-video and audio-only files.

Rotation
    Display-matrix rotation is applied (``np.rot90``, as ffmpeg's autorotate does); pixels come back
    upright, H and W swapped for 90/270 degrees. ``size`` applies to the upright frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from video_retrieval.errors import UserError, VideoDecodeError
from video_retrieval.media.decord_backend import decord_ok
from video_retrieval.media.pyav_backend import (
    FrameIndex,
    check_path,
    decode_pts,
    header_info,
    scan_video,
)

BACKENDS = ("auto", "decord", "pyav")
_EPS = 1e-6  # seconds; a sample time within this of a frame's PTS counts as reaching it


class SamplingError(UserError, ValueError):
    """Invalid sampling arguments (both num_frames and fps, start >= end, ...)."""


@dataclass
class VideoInfo:
    duration: float  # seconds (end of the last decodable frame)
    fps: float  # average frame rate
    num_frames: int  # frames really present (packet scan), not the header's claim
    width: int  # displayed width (after rotation)
    height: int  # displayed height (after rotation)
    rotation: int  # display rotation in counter-clockwise degrees (0, 90, 180, 270)
    codec: str = ""
    header_frames: int = 0  # frame count the container header claims (0 if none)
    header_duration: float = 0.0  # video stream duration the header claims (0 if none)


@dataclass
class Frames:
    pixels: np.ndarray  # uint8 [T,H,W,3] RGB
    timestamps: np.ndarray  # float64 [T] seconds, presentation time of each returned frame
    mask: np.ndarray  # bool [T]; False for padding (padding repeats the last real frame)
    duration: float
    fps: float
    num_frames: int
    path: str
    backend: str  # "decord" | "pyav"
    indices: np.ndarray = field(default=None)  # int64 [T] frame index of each returned frame
    header_duration: float = 0.0  # video stream duration the header claims (0 if none)


#: a decodable part shorter than the container's declared duration by more than this (one
#: 2 s moment clip) is a truncated file: refused, not treated as a shorter video
TRUNCATION_SLACK_S = 2.0


def truncation(duration: float, header_duration: float) -> str | None:
    """Why a video whose decodable frames end at ``duration`` while its container declares
    ``header_duration`` is truncated, or None when it is not (``TRUNCATION_SLACK_S``)."""
    declared = float(header_duration or 0.0)
    if declared > 0 and declared - float(duration) > TRUNCATION_SLACK_S:
        return (
            f"truncated: decodable frames end at {duration:.2f}s of the {declared:.2f}s the "
            "container declares"
        )
    return None


def probe_video(path, exact: bool = True) -> VideoInfo:
    """Duration, frame rate, frame count, upright size and rotation of a video file.

    ``exact=True`` (default) scans every packet (no decoding): the true frame count and the end of
    the last frame, also for truncated files and containers without a count (WebM, MKV); about
    40 ms for a 60 s 640x360 H.264 file here. ``exact=False`` reads only the header and the first
    frame (constant time; duration/num_frames are the header's claims).
    """
    path = check_path(path)
    if not exact:
        h = header_info(path)
        swap = h["rotation"] in (90, 270)
        if swap:
            h["width"], h["height"] = h["height"], h["width"]
        return VideoInfo(**h)
    return _info(scan_video(path))


def _info(index: FrameIndex) -> VideoInfo:
    swap = index.rotation in (90, 270)
    return VideoInfo(
        duration=index.duration,
        fps=index.fps,
        num_frames=len(index.pts),
        width=index.height if swap else index.width,
        height=index.width if swap else index.height,
        rotation=index.rotation,
        codec=index.codec,
        header_frames=index.header_frames,
        header_duration=index.header_duration,
    )


def sample_indices(
    times: np.ndarray,
    duration: float,
    num_frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose frames: returns (ids int64 [L], mask bool [L]) as described in the module docstring.

    ``times`` are the sorted frame PTS in seconds from the first frame; ``ids`` index into it.
    """
    if num_frames is not None and fps is not None:
        raise SamplingError("give num_frames or fps, not both")
    s = 0.0 if start is None else float(start)
    e = float(duration) if end is None else float(end)
    if not (math.isfinite(s) and math.isfinite(e)):
        raise SamplingError(f"start/end must be finite, got {start}, {end}")
    if s < 0:
        raise SamplingError(f"start must be >= 0, got {s}")
    if e <= s:
        raise SamplingError(f"end ({e}) must be greater than start ({s})")
    if s >= duration:
        raise SamplingError(f"start {s:.3f}s is at or past the end of the video ({duration:.3f}s)")
    times = np.asarray(times, dtype=np.float64)
    if num_frames is None and fps is None:
        ids = np.nonzero((times >= s - _EPS) & (times < e - _EPS))[0]
        if len(ids) == 0:
            ids = np.array([_presented_at(times, s)])
        return ids.astype(np.int64), np.ones(len(ids), dtype=bool)
    if num_frames is not None:
        t = int(num_frames)
        if t < 1 or t != num_frames:
            raise SamplingError(f"num_frames must be a positive integer, got {num_frames}")
        targets = s + (np.arange(t) + 0.5) * ((e - s) / t)
    else:
        f = float(fps)
        if not (f > 0 and math.isfinite(f)):
            raise SamplingError(f"fps must be > 0, got {fps}")
        k = max(0, math.ceil((e - s) * f - 0.5 - 1e-9))  # number of k with s + (k + .5) / f < e
        # a window shorter than half a step still gets one sample, at its own midpoint
        targets = s + (np.arange(k) + 0.5) / f if k else np.array([(s + e) / 2])
    inside = targets < duration - _EPS
    idx = np.searchsorted(times, targets + _EPS, side="right") - 1
    idx = np.clip(idx, 0, len(times) - 1)
    real = np.unique(idx[inside])
    if len(real) == 0:
        real = np.array([_presented_at(times, s)], dtype=np.int64)
    length = len(targets)
    ids = np.full(length, real[-1], dtype=np.int64)
    ids[: len(real)] = real
    mask = np.zeros(length, dtype=bool)
    mask[: len(real)] = True
    return ids, mask


def symmetric_bounds(info: VideoInfo) -> tuple[float | None, float | None]:
    """(start, end) from the first to the last frame centre: segment midpoints over this window
    are symmetric under time reversal (``RetrievalDataModule(symmetric_window=True)``)."""
    half = 0.5 / info.fps if info.fps > 0 else 0.0
    if info.duration > 2 * half:
        return half, info.duration - half
    return None, None


def _presented_at(times: np.ndarray, t: float) -> int:
    return int(max(0, np.searchsorted(times, t + _EPS, side="right") - 1))


def load_frames(
    path,
    num_frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    threads: int = 1,
) -> Frames:
    """Decode the sampled frames of ``path`` (see the module docstring for every rule)."""
    if backend not in BACKENDS:
        raise SamplingError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
    path = check_path(path)
    index = scan_video(path)
    ids, mask = sample_indices(index.times, index.duration, num_frames, fps, start, end)
    if size is not None:  # validate before decoding
        target_size(index.height, index.width, size)
    uniq = np.unique(ids)

    pixels = None
    used = "pyav"
    decord_error = None
    if backend == "decord" or (backend == "auto" and decord_ok(index)):
        try:
            from video_retrieval.media.decord_backend import decode_indices

            batch = decode_indices(path, index, uniq, threads=threads)
            pixels = batch[np.searchsorted(uniq, ids)]
            used = "decord"
        except Exception as exc:  # decord raises many types; any failure means fall back
            decord_error = exc
            if backend == "decord":
                raise VideoDecodeError(path, f"decord failed: {exc}") from None
    if pixels is None:
        decoded = decode_pts(path, index, index.pts[uniq], threads=threads)
        ok = np.array([int(index.pts[i]) in decoded for i in uniq])
        if not ok.any():
            reason = "no frame could be decoded"
            if decord_error is not None:
                reason += f" (decord: {decord_error})"
            raise VideoDecodeError(path, reason)
        if not ok.all():  # damaged frames: keep the decodable ones, pad as for missing frames
            good = uniq[ok]
            real = np.unique(ids[mask])
            real = real[np.isin(real, good)]
            if len(real) == 0:
                real = good[:1]
            ids = np.full(len(ids), real[-1], dtype=np.int64)
            ids[: len(real)] = real
            mask = np.zeros(len(ids), dtype=bool)
            mask[: len(real)] = True
        pixels = np.stack([decoded[int(index.pts[i])] for i in ids])

    if index.rotation:
        pixels = np.ascontiguousarray(np.rot90(pixels, k=index.rotation // 90, axes=(1, 2)))
    if size is not None:
        pixels = resize_frames(pixels, size)
    return Frames(
        pixels=pixels,
        timestamps=index.times[ids].astype(np.float64),
        mask=mask,
        duration=float(index.duration),
        fps=float(index.fps),
        num_frames=len(index.pts),
        path=path,
        backend=used,
        indices=ids,
        header_duration=index.header_duration,
    )


def target_size(h: int, w: int, size) -> tuple[int, int]:
    """(H, W) for ``size``: int = short side (aspect kept, long side truncated as CLIP's
    torchvision ``Resize`` does), (H, W) = exact."""
    if isinstance(size, (int, np.integer)):
        if size <= 0:
            raise SamplingError(f"size must be positive, got {size}")
        from video_retrieval.media.resize import resize_shape

        th, tw = resize_shape(h, w, int(size))
        return max(1, th), max(1, tw)
    th, tw = (int(v) for v in size)
    if th <= 0 or tw <= 0:
        raise SamplingError(f"size must be positive, got {size}")
    return th, tw


def resize_frames(pixels: np.ndarray, size) -> np.ndarray:
    """Resize uint8 [T,H,W,3] frames with CLIP's resize (antialiased bicubic, width then height
    pass, each rounded to uint8: ``media.resize``), so that decoding at ``size=S`` and
    then preprocessing for an S-px CLIP gives exactly the pixels of preprocessing full frames."""
    t, h, w, _ = pixels.shape
    th, tw = target_size(h, w, size)
    if (th, tw) == (h, w):
        return pixels
    import torch

    from video_retrieval.media.resize import resize_two_pass

    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    return resize_two_pass(x, (th, tw)).permute(0, 2, 3, 1).contiguous().numpy()


__all__ = [
    "Frames",
    "VideoInfo",
    "SamplingError",
    "load_frames",
    "probe_video",
    "sample_indices",
    "resize_frames",
    "symmetric_bounds",
]
