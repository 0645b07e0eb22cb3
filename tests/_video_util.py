"""Test videos whose frames carry their own index in their colour, written with the bundled ffmpeg
(every run through ffmpeg-python: ``video_retrieval.media.write.run``).

Frame ``i`` is a flat colour with R = (i % 32) * 8 and G = (i // 32) * 8 (B = 128), so the index
survives lossy compression (errors stay far below the 8-level step) and ``frame_ids`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import ffmpeg as ffmpeg_python
import numpy as np

from video_retrieval.media.write import run, write_video

# ffmpeg options that take no value (everything else is an "-option value" pair)
_FLAGS = {"shortest", "an", "vn", "sn", "dn", "copyts", "re"}


def index_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [n,h,w,3]: frame i encodes i in its R/G channels (n <= 1024)."""
    assert n <= 1024
    i = np.arange(n)
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    frames[..., 0] = ((i % 32) * 8)[:, None, None]
    frames[..., 1] = ((i // 32) * 8)[:, None, None]
    frames[..., 2] = 128
    return frames


def frame_ids(pixels: np.ndarray) -> np.ndarray:
    """The frame index encoded in each frame of uint8 [T,H,W,3] (read from the centre region)."""
    t, h, w, _ = pixels.shape
    centre = (
        pixels[:, h // 4 : h - h // 4, w // 4 : w - w // 4].reshape(t, -1, 3).astype(np.float64)
    )
    rgb = np.median(centre, axis=1)
    return (np.round(rgb[:, 0] / 8) + 32 * np.round(rgb[:, 1] / 8)).astype(np.int64)


def ffmpeg(*args: str) -> None:
    """``ffmpeg([input options] -i SRC ... [output options] DST)`` through ffmpeg-python: options
    before each ``-i`` belong to that input, the rest to the output ``DST`` (the last argument)."""
    *opts, dst = (str(a) for a in args)
    inputs, pending, it = [], {}, iter(opts)
    for tok in it:
        if not tok.startswith("-"):
            raise ValueError(f"expected an -option, got {tok!r} in {args}")
        key = tok[1:]
        if key in _FLAGS:
            pending[key] = None
            continue
        value = next(it)
        if key == "i":
            inputs.append(ffmpeg_python.input(value, **pending))
            pending = {}
        else:
            pending[key] = value
    run(ffmpeg_python.output(*inputs, dst, **pending), dst)


def write_index_video(
    path, n: int = 50, fps: float = 25.0, codec: str = "h264", h: int = 48, w: int = 64, **kw
) -> Path:
    return write_video(path, index_frames(n, h, w), fps=fps, codec=codec, **kw)


def write_vfr_video(
    path, segments: list[tuple[int, float]], codec: str = "h264"
) -> tuple[Path, np.ndarray]:
    """A variable-frame-rate video: ``segments`` = [(frames, seconds per frame), ...].

    Returns the path and the exact presentation time of every frame (timescale 1000 ticks/s).
    """
    times = []
    t = 0.0
    for count, step in segments:
        for _ in range(count):
            times.append(round(t, 3))
            t += step
    n = len(times)
    # setpts from a piecewise expression in whole milliseconds (time base 1/1000): frame N gets times[N]
    expr = "0"
    t0, n0 = 0.0, 0
    parts = []
    for count, step in segments:
        parts.append((n0, n0 + count, t0, step))
        t0 += count * step
        n0 += count
    for lo, _hi, start, step in parts:  # later segments end up outermost
        expr = f"if(gte(N,{lo}),{round(start * 1000)}+(N-{lo})*{round(step * 1000)},{expr})"
    extra = [
        "-vf",
        f"settb=1/1000,setpts='{expr}'",
        "-fps_mode",
        "vfr",
        "-enc_time_base",
        "1/1000",
        "-video_track_timescale",
        "1000",
    ]
    write_video(path, index_frames(n), fps=25.0, codec=codec, extra_args=extra)
    return Path(path), np.asarray(times)


def marker_frames(n: int = 3, h: int = 48, w: int = 64) -> np.ndarray:
    """Black frames with a red block top-left and a green block bottom-left (orientation check)."""
    frames = np.zeros((n, h, w, 3), dtype=np.uint8)
    frames[:, :16, :16, 0] = 255
    frames[:, -16:, :16, 1] = 255
    return frames


def rotate_copy(src, dst, degrees: int) -> Path:
    """Remux ``src`` into ``dst`` with a display-matrix rotation (counter-clockwise degrees)."""
    ffmpeg("-display_rotation:v", str(degrees), "-i", str(src), "-c", "copy", str(dst))
    return Path(dst)


def ffmpeg_decode_first(path, shape: tuple[int, int, int]) -> np.ndarray:
    """Reference: the first frame as decoded (and auto-rotated) by the ffmpeg CLI, uint8 ``shape``."""
    graph = ffmpeg_python.input(str(path)).output(
        "pipe:", vframes=1, format="rawvideo", pix_fmt="rgb24"
    )
    out = run(graph, path)
    return np.frombuffer(out, dtype=np.uint8).reshape(shape)


def truncate_copy(src, dst, fraction: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def garble_copy(src, dst, at: float = 0.5, length: float = 0.125, seed: int = 0) -> Path:
    """Copy with random bytes overwriting ``length`` of the file starting at fraction ``at``."""
    data = bytearray(Path(src).read_bytes())
    lo, n = int(len(data) * at), int(len(data) * length)
    data[lo : lo + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_audio_only(path) -> Path:
    """A 1 s AAC tone and no video stream."""
    tone = ffmpeg_python.input("sine=frequency=440:duration=1", f="lavfi")
    run(tone.output(str(path), acodec="aac"), path)
    return Path(path)
