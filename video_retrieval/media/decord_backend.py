"""decord side of video decoding: ``get_batch`` of frame indices, with consistency checks.

decord (0.6, unmaintained) trusts container metadata: its frame count can exceed what the file
really holds (``get_batch`` may then hang, decord #373) and it mangles rotated files (measured here:
a 64x48 H.264 file with a 90-degree display matrix comes back as a [64,48,4] array) and, after a
seek into an open-GOP stream (leading pictures: x265's default CRA frames, x264 ``open-gop=1``),
returns frames several positions off (measured with HEVC and H.264, keyframe every 10), as it does
in MPEG-TS files (frames 10 positions late). So the caller
only uses decord after the PyAV scan, and ``decode_indices`` refuses (raises) whenever decord's
view of the file disagrees with that scan; the caller then falls back to PyAV.
"""

from __future__ import annotations

import numpy as np

from video_retrieval.media.pyav_backend import FrameIndex

# Containers where decord returned the exact frames in our tests (H.264/HEVC/VP8/VP9/MPEG-4/MJPEG,
# B-frames, VFR, start offsets). Not MPEG-TS: there decord returned frames 10 positions late.
DECORD_CONTAINERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi")


class DecordMismatch(RuntimeError):
    """decord disagrees with the PyAV frame index; use PyAV for this file."""


def decord_problem(index: FrameIndex) -> str:
    """Why decord must not decode this file ("" when it may)."""
    if index.container not in DECORD_CONTAINERS:
        return f"decord is not trusted with {index.container!r} files"
    if index.rotation:
        return "decord does not handle rotated videos"
    if index.open_gop:
        return "decord returns wrong frames after seeking in open-GOP streams"
    return ""


def decord_ok(index: FrameIndex) -> bool:
    return not decord_problem(index)


def decode_indices(path: str, index: FrameIndex, ids: np.ndarray, threads: int = 1) -> np.ndarray:
    """Decode frames ``ids`` (sorted unique presentation-order indices) -> uint8 [N,H,W,3]."""
    import decord

    problem = decord_problem(index)
    if problem:
        raise DecordMismatch(problem)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(0, int(threads)))
    n = len(vr)
    if n != len(index.pts):
        raise DecordMismatch(f"decord counts {n} frames, the packet scan {len(index.pts)}")
    ids = np.asarray(ids, dtype=np.int64)
    ts = np.asarray(vr.get_frame_timestamp(np.concatenate([[0], ids]).tolist()), dtype=np.float64)
    ts = ts[:, 0] - ts[0, 0]
    tol = 0.5 * (float(np.min(np.diff(index.times))) if len(index.times) > 1 else 1e-3)
    if np.any(np.abs(ts[1:] - index.times[ids]) > tol):
        raise DecordMismatch("decord frame timestamps differ from the packet PTS")
    frames = vr.get_batch(ids.tolist()).asnumpy()
    if frames.shape != (len(ids), index.height, index.width, 3) or frames.dtype != np.uint8:
        raise DecordMismatch(f"decord returned {frames.dtype} {frames.shape}")
    return frames
