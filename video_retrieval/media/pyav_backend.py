"""PyAV (bundled FFmpeg) side of video decoding: the frame index and seek-then-decode.

``scan_video`` reads the packets of the first video stream once (no decoding apart from the first
frame), which gives the exact presentation timestamp of every frame the file really contains (true
PTS for variable-frame-rate files, only the packets that are present for truncated files), the
keyframes (where a seek can land) and the rotation metadata. ``decode_pts`` then decodes exactly
the frames with the given PTS: it seeks to the keyframe at or before each wanted frame and decodes
forward, and only seeks when a keyframe lies between the decoder's position and the next wanted
frame, so nearby frames share one seek and far apart frames skip whole GOPs.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np

from video_retrieval.errors import VideoDecodeError


@dataclass
class FrameIndex:
    """Every frame of a video stream, in presentation order."""

    pts: np.ndarray  # int64 [N] raw PTS in stream time base, sorted ascending, unique
    times: np.ndarray  # float64 [N] seconds from the first frame (times[0] == 0)
    key_pts: np.ndarray  # int64 [K] raw PTS of keyframes, sorted
    time_base: float
    duration: float  # seconds: end of the last frame minus start of the first
    fps: float  # average frame rate of the stream (header value, else N / duration)
    width: int  # coded width (before rotation)
    height: int
    rotation: int  # counter-clockwise degrees to rotate decoded pixels for display: 0/90/180/270
    codec: str
    header_frames: int  # frame count in the container header (0 when not given)
    # open GOP: a frame after a keyframe in decode order is shown before it (leading pictures)
    open_gop: bool = False
    container: str = ""  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    # the video stream's duration as its header declares it (0 when not declared); a decodable
    # part much shorter than this means a truncated file
    header_duration: float = 0.0


# FFmpeg "decodes" any text file as ANSI art (format "tty"); such files are not videos.
_TEXT_FORMATS = {"tty"}


def _open(path: str):
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"not a readable video file ({_short(exc)})") from None
    if container.format.name in _TEXT_FORMATS:
        container.close()
        raise VideoDecodeError(
            path, f"not a video file (FFmpeg reads it as {container.format.name!r} text)"
        )
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream in the file (audio-only or data file?)")
    if container.streams.video[0].codec_context is None:  # codec id unknown or damaged header
        container.close()
        raise VideoDecodeError(path, "unknown or unsupported video codec (no decoder)")
    return container


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def check_path(path: str | os.PathLike) -> str:
    """The path as a string; raises VideoDecodeError for missing paths, folders and empty files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "no such file")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return path


def scan_video(path: str) -> FrameIndex:
    """Build the frame index of ``path`` from its packets; raises VideoDecodeError when unusable.

    The last few indexes are cached by (path, size, mtime), so ``probe_video`` followed by
    ``load_frames`` on the same file scans it once; a rewritten file is scanned again.
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    container = _open(path)
    try:
        index = _scan(path, container)
    finally:
        container.close()
    for arr in (index.pts, index.times, index.key_pts):
        arr.flags.writeable = False  # shared between callers through the cache
    with _LOCK:
        _CACHE[key] = index
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return index


def clear_scan_cache() -> None:
    with _LOCK:
        _CACHE.clear()


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()


def header_info(path: str) -> dict:
    """Container-header facts plus the first frame (for size and rotation), without a packet scan.

    Cheap on any file size, but duration and frame count are what the header claims (estimated
    as duration * fps when the header has no count).
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError:
            pass
        if first is None:
            raise VideoDecodeError(
                path, "no decodable video frames (empty, truncated or corrupt stream)"
            )
        tb = float(stream.time_base) if stream.time_base else 0.0
        if stream.duration and tb:
            duration = stream.duration * tb
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        frames = int(stream.frames or 0) or int(round(duration * fps))
        rotation = int(round(float(getattr(first, "rotation", 0) or 0) / 90.0)) % 4 * 90
        return {
            "duration": float(duration),
            "fps": fps,
            "num_frames": frames,
            "width": int(first.width),
            "height": int(first.height),
            "rotation": rotation,
            "codec": stream.codec_context.name,
            "header_frames": int(stream.frames or 0),
        }
    finally:
        container.close()


def _scan(path: str, container) -> FrameIndex:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    pts_list: list[int] = []
    durations: list[int] = []
    keys: list[int] = []
    first_frame = None
    last_key = None
    open_gop = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # end-of-stream flush packet
                continue
            if first_frame is None:
                try:
                    for frame in packet.decode():
                        first_frame = frame
                        break
                except av.error.FFmpegError:
                    pass
            if getattr(packet, "is_discard", False):
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                continue
            pts_list.append(int(ts))
            durations.append(int(packet.duration or 0))
            if packet.is_keyframe:
                keys.append(int(ts))
                last_key = int(ts)
            elif last_key is not None and ts < last_key:
                open_gop = True
    except av.error.FFmpegError:
        pass  # damaged or truncated data: keep the packets read so far
    if first_frame is None and pts_list:
        try:  # flush the decoder: a short stream may output its first frame only now
            for frame in ctx.decode(None):
                first_frame = frame
                break
        except av.error.FFmpegError:
            pass
    if not pts_list or first_frame is None:
        raise VideoDecodeError(
            path, "no decodable video frames (empty, truncated or corrupt stream)"
        )

    tb = float(stream.time_base) if stream.time_base else 1.0
    pts_arr = np.asarray(pts_list, dtype=np.int64)
    order = np.argsort(pts_arr, kind="stable")
    pts_sorted, first = np.unique(pts_arr[order], return_index=True)
    dur_sorted = np.asarray(durations, dtype=np.int64)[order][first]
    times = (pts_sorted - pts_sorted[0]).astype(np.float64) * tb
    n = len(pts_sorted)
    rate = stream.average_rate or stream.guessed_rate
    if n > 1:
        step = float(np.median(np.diff(times)))
    else:
        step = 1.0 / float(rate) if rate else 0.04
    if dur_sorted[-1] > 0:  # in integer ticks first: 0.4, not 0.39999999999999997
        duration = float(int(pts_sorted[-1] - pts_sorted[0] + dur_sorted[-1]) * tb)
    else:
        duration = float(times[-1] + step)
    fps = float(rate) if rate else n / duration
    if not keys:
        keys = [int(pts_sorted[0])]
    rotation = int(round(float(getattr(first_frame, "rotation", 0) or 0) / 90.0)) % 4 * 90
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif stream.frames and rate:
        declared = float(stream.frames) / float(rate)
    else:  # the container duration may include a longer audio track: not a video claim
        declared = 0.0
    return FrameIndex(
        header_duration=declared,
        pts=pts_sorted,
        times=times,
        key_pts=np.unique(np.asarray(keys, dtype=np.int64)),
        time_base=tb,
        duration=duration,
        fps=fps,
        width=int(first_frame.width),
        height=int(first_frame.height),
        rotation=rotation,
        codec=ctx.name,
        header_frames=int(stream.frames or 0),
        open_gop=open_gop,
        container=container.format.name,
    )


def decode_pts(
    path: str, index: FrameIndex, wanted: np.ndarray, threads: int = 1, stats: dict | None = None
) -> dict[int, np.ndarray]:
    """Decode the frames whose raw PTS are in ``wanted``; returns {pts: uint8 [H,W,3] RGB}.

    Frames that cannot be decoded (damaged data) are missing from the result. ``stats``, when
    given, receives ``packets`` (packets sent to the decoder) and ``seeks``.
    """
    wanted = np.unique(np.asarray(wanted, dtype=np.int64))
    out: dict[int, np.ndarray] = {}
    if len(wanted) == 0:
        return out
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = max(0, int(threads))
        reader = _Reader(container, stream, index.key_pts, wanted)
        for target in wanted:
            frame = reader.frame_at(int(target))
            if frame is not None:
                out[int(target)] = frame.to_ndarray(format="rgb24")
    finally:
        container.close()
    if stats is not None:
        stats.update(packets=reader.packets, seeks=reader.seeks)
    return out


class _Reader:
    """Forward decoder over one stream that seeks only when it pays off.

    Only a frame whose PTS equals the wanted PTS is returned: when decoding passes the wanted PTS
    without producing it (damaged data), the frame counts as undecodable rather than being
    replaced by an earlier picture under the wrong timestamp.
    """

    def __init__(self, container, stream, key_pts: np.ndarray, wanted=()):
        self.container = container
        # Packets of frames nobody wants are decoded with skip_frame=NONREF: a frame no other frame
        # references need not be reconstructed at all (typically the B-frames).
        self.wanted = {int(w) for w in wanted}
        self.ctx = stream.codec_context
        self.packets = 0
        self.seeks = 0
        self.stream = stream
        self.key_pts = key_pts
        self.frames = None  # generator of decoded frames since the last seek
        self.last_pts: int | None = None  # PTS of the last frame taken from the generator
        self.pending = None  # a decoded frame past the last target, kept for the next one

    def _gen(self):
        # After a packet fails to decode, FFmpeg still outputs later frames that reference the
        # lost data, concealed with older pictures (measured: frame 85 of a garbled H.264 file
        # came out showing frame 63, without any corrupt flag). So every packet from a failed one
        # up to the next keyframe packet that decodes is "damaged" (in decode order), and frames
        # of damaged packets are skipped: they count as missing rather than as wrong pictures.
        order: dict[int, int] = {}  # pts -> decode position of its packet
        damaged: list[list[float]] = []  # [first, end) decode positions
        pos = 0
        for packet in self.container.demux(self.stream):
            pos += 1
            self.packets += 1
            if self.wanted:
                skip = (
                    "DEFAULT" if packet.pts is None or int(packet.pts) in self.wanted else "NONREF"
                )
                if self.ctx.skip_frame != skip:
                    self.ctx.skip_frame = skip
            if packet.pts is not None:
                order[int(packet.pts)] = pos
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                if not damaged or damaged[-1][1] != math.inf:
                    damaged.append([pos, math.inf])
                continue
            if packet.is_keyframe and damaged and damaged[-1][1] == math.inf:
                damaged[-1][1] = pos
            for frame in frames:
                at = order.pop(frame.pts, None) if frame.pts is not None else None
                if frame.is_corrupt:
                    continue
                if at is not None and any(lo <= at < hi for lo, hi in damaged):
                    continue
                yield frame

    def _seek(self, key: int | None) -> None:
        self.seeks += 1
        if key is None:  # from the start of the file
            self.container.seek(0, backward=True, any_frame=False)
        else:
            self.container.seek(int(key), stream=self.stream, backward=True, any_frame=False)
        self.frames = self._gen()
        self.last_pts = None
        self.pending = None

    def frame_at(self, target: int):
        ki = int(np.searchsorted(self.key_pts, target, side="right")) - 1
        keys: list[int | None] = [int(self.key_pts[max(ki, 0)])]
        if ki > 0:
            keys.append(int(self.key_pts[ki - 1]))  # one keyframe earlier, for imprecise seeks
        keys.append(None)  # last resort: decode from the start of the file
        if (
            self.frames is not None
            and self.last_pts is not None
            and self.last_pts < target
            and keys[0] <= self.last_pts
        ):
            frame, overshoot = self._forward_to(target)
            if frame is not None or not overshoot:
                return frame
        for key in keys:
            self._seek(key)
            frame, overshoot = self._forward_to(target)
            if frame is not None or not overshoot:
                return frame
        return None

    def _forward_to(self, target: int):
        """Decode forward to the frame with PTS == target.

        Returns (frame or None, overshoot): overshoot is True when the very first frame available
        was already past the target (the seek landed too late; an earlier start may find it).
        """
        first = True
        while True:
            if self.pending is not None:
                frame, self.pending = self.pending, None
            else:
                try:
                    frame = next(self.frames)
                except (StopIteration, av.error.FFmpegError):
                    self.frames = None
                    return None, first
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                continue
            if pts == target:
                self.last_pts = pts
                return frame, False
            if pts > target:
                self.pending = frame  # may be the next wanted frame
                return None, first
            self.last_pts = pts
            first = False
