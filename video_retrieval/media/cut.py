"""Cutting a moment out of a video into an MP4 (``vr clip``, ``GET /media/{id}/clip``).

Two ways, through ffmpeg-python with ``imageio-ffmpeg``'s binary (``media.write.run``):

* **exact** (default): the frames presented from ``start`` to ``end`` re-encoded as H.264
  (x264 ``veryfast``, CRF 18, yuv420p, even size) with AAC audio when the source has sound, and
  ``+faststart`` so a browser plays it while it downloads. ffmpeg's input seek decodes from the
  keyframe before ``start`` and drops the frames before it, so the cut lands on the asked frame;
  the clip is ``end - start`` long within one frame.
* **copy** (``copy=True``): the packets themselves, no re-encoding (fast, no quality loss, any
  length), which can only start on a keyframe: the cut moves back to the keyframe at or before
  ``start``, and ``Cut.moved_by`` says by how much (the caller prints it). Packets are cut in
  decode order, so with B-frames the clip may also run a few frames past ``end``; ``Cut.end`` is
  where the written clip really ends (its packet scan).

The range is checked against the video's real duration (a packet scan, ``decode.probe_video``)
before ffmpeg runs: ``0 <= start < end <= duration`` (a frame's length of slack at the end), and
at most ``max_seconds`` long. The output is written to a temporary name and renamed, so an
interrupted cut leaves no half file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path

MP4_SUFFIXES = (".mp4", ".m4v", ".mov")
EXACT_OPTIONS = {
    "c:v": "libx264",
    "preset": "veryfast",
    "crf": 18,
    "pix_fmt": "yuv420p",
    "vf": "scale=trunc(iw/2)*2:trunc(ih/2)*2",  # yuv420p needs even sides
    "movflags": "+faststart",
    "format": "mp4",
}


@dataclass(frozen=True)
class Cut:
    path: Path
    start: float  # seconds of the source where the clip starts (copy: the keyframe)
    end: float  # seconds of the source where it ends
    asked_start: float
    asked_end: float
    duration: float  # of the written clip (its packet scan)
    mode: str  # "exact" or "copy"

    @property
    def moved_by(self) -> float:
        """Seconds the start moved back to a keyframe (0 for an exact cut)."""
        return round(self.asked_start - self.start, 6)

    def line(self) -> str:
        """What ``vr clip`` prints: what was written, and for a copy how far the cut moved."""
        text = f"wrote {self.path} ({self.duration:.2f} s: {self.start:.2f}-{self.end:.2f} s"
        if self.mode == "exact":
            return text + ", re-encoded H.264)"
        return text + (
            f", stream copy: the start moved {self.moved_by:.2f} s back to the keyframe at "
            f"{self.start:.2f} s and the end to {self.end:.2f} s; use the default exact cut for "
            f"exactly {self.asked_start:g}-{self.asked_end:g} s)"
        )

    def to_dict(self) -> dict:
        return {
            "out": str(self.path),
            "mode": self.mode,
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "asked": {"start": self.asked_start, "end": self.asked_end},
            "moved_by": self.moved_by,
            "duration": round(self.duration, 6),
        }


def check_range(start, end, duration: float, max_seconds: float | None = None,
                fps: float = 0.0) -> tuple[float, float]:  # fmt: skip
    """``(start, end)`` as floats if they name a stretch of a ``duration``-second video no
    longer than ``max_seconds``, else a one-line ``UserError``."""
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError):
        raise UserError(f"start and end must be seconds, got {start!r} and {end!r}") from None
    if not (math.isfinite(s) and math.isfinite(e)):
        raise UserError(f"start and end must be finite seconds, got {start} and {end}")
    slack = 1.0 / fps if fps and fps > 0 else 0.05
    if s < 0 or e <= s or s >= duration or e > duration + slack:
        raise UserError(
            f"the range {s:g}-{e:g} s is outside the video (0-{duration:g} s): give "
            "0 <= START < END <= its duration"
        )
    e = min(e, duration)
    if max_seconds is not None and e - s > max_seconds + 1e-9:
        raise UserError(
            f"the range {s:g}-{e:g} s is {e - s:g} s long; the limit is {max_seconds:g} s "
            "(--max-seconds)"
        )
    return s, e


def keyframe_before(path, t: float) -> float:
    """Seconds of the last keyframe at or before ``t`` (the first frame when none is)."""
    from video_retrieval.media.pyav_backend import scan_video

    index = scan_video(str(path))
    keys = (np.asarray(index.key_pts, np.int64) - int(index.pts[0])) * index.time_base
    before = keys[keys <= t + 1e-6]
    return float(before.max()) if len(before) else 0.0


def cut_clip(
    src,
    start: float,
    end: float,
    out,
    copy: bool = False,
    max_seconds: float | None = None,
    timeout: float | None = None,
) -> Cut:
    """Write ``start``-``end`` seconds of ``src`` to the MP4 ``out`` (see the module doc)."""
    import ffmpeg

    from video_retrieval.media.decode import probe_video
    from video_retrieval.media.write import run

    out = Path(out)
    if out.suffix.lower() not in MP4_SUFFIXES:
        raise UserError(f"{out}: the clip is an MP4: name it .mp4")
    if not out.parent.is_dir():
        raise UserError(f"{out}: no such folder: {out.parent}")
    info = probe_video(src)
    s, e = check_range(start, end, info.duration, max_seconds, info.fps)
    has_audio = _has_audio(src)
    if copy:
        k = keyframe_before(src, s)
        inp = ffmpeg.input(str(src), ss=f"{k:.6f}", t=f"{e - k:.6f}")
        opts = {"c": "copy", "movflags": "+faststart", "format": "mp4",
                "avoid_negative_ts": "make_zero"}  # fmt: skip
        streams = [inp["v:0"]] + ([inp["a:0"]] if has_audio else [])
        first = k
    else:
        inp = ffmpeg.input(str(src), ss=f"{s:.6f}", t=f"{e - s:.6f}")
        opts = dict(EXACT_OPTIONS)
        streams = [inp["v:0"]]
        if has_audio:
            streams.append(inp["a:0"])
            opts.update({"c:a": "aac", "b:a": "128k"})
        first = s
    with atomic_path(out) as tmp:
        run(ffmpeg.output(*streams, str(tmp), **opts), src, timeout=timeout)
        written = probe_video(tmp)
    # a stream copy ends on a packet boundary too: say where the written clip really ends
    last = first + written.duration if copy else e
    return Cut(out, first, last, float(start), float(end), written.duration,
               "copy" if copy else "exact")  # fmt: skip


def _has_audio(src) -> bool:
    import av

    try:
        with av.open(str(src), metadata_errors="ignore") as c:
            return bool(c.streams.audio)
    except av.error.FFmpegError:
        return False


def clip_name(video, start: float, end: float) -> str:
    """A file name for the clip of ``video`` from ``start`` to ``end``:
    ``<stem>_<start>-<end>s.mp4`` (times to 0.1 s, names kept to printable characters)."""
    stem = Path(str(video)).stem or "clip"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80] or "clip"
    return f"{safe}_{start:.1f}-{end:.1f}s.mp4"
