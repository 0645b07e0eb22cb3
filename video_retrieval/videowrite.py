"""Write uint8 frames to a real video file with the ffmpeg binary bundled by imageio-ffmpeg.

Used by the synthetic world and by tests that need videos of every codec; no system ffmpeg needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

# Encoder arguments per codec name; each chosen so the result decodes with decord and PyAV.
# fmt: off
CODECS: dict[str, list[str]] = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p"],
    "h264_lossless": ["-c:v", "libx264", "-preset", "veryfast", "-qp", "0", "-pix_fmt", "yuv444p"],
    "vp9": ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "20", "-deadline", "realtime", "-pix_fmt", "yuv420p"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"],
    "mjpeg": ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"],
}
# fmt: on


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "h264",
    extra_args: list[str] | None = None,
    gop: int | None = None,
) -> Path:
    """Encode ``frames`` (uint8 [T,H,W,3] RGB) to ``path``; returns the path.

    The file is written to a temporary name then renamed, so a killed writer leaves no half file.
    ``gop`` sets the keyframe interval (small values make seeking cheap).
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot write a video with zero frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    args = CODECS[codec] if codec in CODECS else ["-c:v", codec]
    extra = list(extra_args or [])
    if codec in ("h264", "hevc", "vp9", "mpeg4") and (h % 2 or w % 2):
        # yuv420p needs even sizes; pad by one pixel rather than failing on odd inputs.
        pad = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
        for i, a in enumerate(extra[:-1]):
            if a in ("-vf", "-filter:v"):  # a caller's filter chain: pad after it (one -vf wins)
                extra[i + 1] = f"{extra[i + 1]},{pad}"
                break
        else:
            args = [*args, "-vf", pad]
    if gop is not None:
        args = [*args, "-g", str(gop)]
    cmd = [
        ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-",
        *args, *extra, str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-800:]}"
        )
    os.replace(tmp, path)
    return path
