"""Every ffmpeg run of the project, through ffmpeg-python and the binary bundled by imageio-ffmpeg.

``write_video`` encodes uint8 frames to a real video file (the synthetic world, tests of every
codec); ``write_test_pattern`` writes ffmpeg's ``testsrc2`` pattern (benchmarks); ``run`` executes
any ffmpeg-python graph with the bundled binary and turns a failure (``ffmpeg.Error``) into an
``FFmpegError`` whose one-line message names the file and ffmpeg's last stderr line. No system
ffmpeg is needed; ffprobe is not used (PyAV probes files).

Example::

    >>> import ffmpeg                                                            # doctest: +SKIP
    >>> from video_retrieval.media.write import run
    >>> run(ffmpeg.input("in.avi").output("out.mp4", vcodec="libx264"), "out.mp4")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import ffmpeg
import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path

# Output options per codec name; each chosen so the result decodes with decord and PyAV.
CODECS: dict[str, dict[str, str | int]] = {
    "h264": {"c:v": "libx264", "preset": "veryfast", "crf": 12, "pix_fmt": "yuv420p"},
    "h264_lossless": {"c:v": "libx264", "preset": "veryfast", "qp": 0, "pix_fmt": "yuv444p"},
    "vp9": {
        "c:v": "libvpx-vp9", "b:v": 0, "crf": 20, "deadline": "realtime", "pix_fmt": "yuv420p",
    },
    "mpeg4": {"c:v": "mpeg4", "q:v": 2, "pix_fmt": "yuv420p"},
    "hevc": {
        "c:v": "libx265", "preset": "ultrafast", "crf": 12, "pix_fmt": "yuv420p",
        "x265-params": "log-level=error",
    },
    "mjpeg": {"c:v": "mjpeg", "q:v": 2, "pix_fmt": "yuvj420p"},
}  # fmt: skip
_EVEN_SIZE_CODECS = ("h264", "hevc", "vp9", "mpeg4")  # yuv420p needs even width and height
# ffmpeg's closing boilerplate, which says nothing about the cause: the last other line does.
_BOILERPLATE = (
    "conversion failed",
    "exiting normally",
    "task finished with error code",
    "terminating thread with return code",
    "nothing was written into output file",
    "error opening output file",
    "error opening input file",
    "error sending frames to consumers",
    "could not open encoder before eof",
    "error selecting an encoder",
    "error while opening encoder",
)
_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")  # "[vost#0:0/libx264 @ 0x55...] " context tags


class FFmpegError(UserError):
    """ffmpeg failed on ``path``; ``reason`` is ffmpeg's last informative stderr line."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"ffmpeg failed on {self.path}: {reason}")


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def last_stderr_line(stderr: bytes | str | None) -> str:
    """ffmpeg's last informative stderr line, without its ``[component @ 0x...]`` tags
    (closing boilerplate such as "Conversion failed!" skipped); "no error output" if empty."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [_PREFIX.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    for line in reversed(lines):
        if not any(b in line.lower() for b in _BOILERPLATE):
            return line
    return lines[-1] if lines else "no error output"


def run(stream, path, input: bytes | None = None, timeout: float | None = None) -> bytes:
    """Run an ffmpeg-python graph with the bundled binary (errors only on stderr, overwriting);
    returns stdout. A failure (what ffmpeg-python's ``.run()`` reports as ``ffmpeg.Error``)
    raises ``FFmpegError`` naming ``path`` and ffmpeg's last stderr line; after ``timeout``
    seconds the process is killed and ``FFmpegError`` says so. Started with ``run_async`` so
    the timeout can kill it."""
    stream = stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error")
    proc = stream.run_async(
        cmd=ffmpeg_exe(),
        pipe_stdin=input is not None,
        pipe_stdout=True,
        pipe_stderr=True,
        overwrite_output=True,
    )
    expired = threading.Event()

    def _kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, _kill) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        out, err = proc.communicate(input)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if expired.is_set():
        raise FFmpegError(path, f"timed out after {timeout:g} s")
    if proc.returncode:
        raise FFmpegError(path, last_stderr_line(err))
    return out


def option_pairs(args: list[str] | dict | None) -> dict:
    """``["-movflags", "+faststart", ...]`` (option/value pairs, the old ``extra_args`` form) or a
    dict -> ffmpeg-python keyword options (``{"movflags": "+faststart"}``)."""
    if not args:
        return {}
    if isinstance(args, dict):
        return dict(args)
    args = list(args)
    if len(args) % 2 or not all(str(k).startswith("-") for k in args[0::2]):
        raise ValueError(f"extra_args must be '-option value' pairs, got {args}")
    return {str(k)[1:]: v for k, v in zip(args[0::2], args[1::2])}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "h264",
    extra_args: list[str] | dict | None = None,
    gop: int | None = None,
) -> Path:
    """Encode ``frames`` (uint8 [T,H,W,3] RGB) to ``path``; returns the path.

    ``codec`` is a name of ``CODECS`` or any ffmpeg encoder name; ``extra_args`` are more output
    options (``{"movflags": "+faststart"}`` or ``["-movflags", "+faststart"]``); ``gop`` sets the
    keyframe interval (small values make seeking cheap). The file is written to a temporary name
    then renamed, so a killed writer leaves no half file. Raises ``FFmpegError`` on failure.
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot write a video with zero frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts: dict = dict(CODECS[codec]) if codec in CODECS else {"c:v": codec}
    opts.update(option_pairs(extra_args))
    if gop is not None:
        opts["g"] = gop
    if codec in _EVEN_SIZE_CODECS and (h % 2 or w % 2):
        # pad by one pixel rather than failing on odd inputs (after a caller's own filter chain)
        pad = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
        key = "filter:v" if "filter:v" in opts else "vf"
        opts[key] = f"{opts[key]},{pad}" if opts.get(key) else pad
    src = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=f"{fps}")
    with atomic_path(path) as tmp:
        run(src.output(str(tmp), **opts), path, input=frames.tobytes())
    return path


def write_test_pattern(
    path: str | os.PathLike,
    seconds: float,
    width: int = 640,
    height: int = 360,
    fps: float = 25.0,
    codec: str = "h264",
    audio: bool = False,
    **options,
) -> Path:
    """ffmpeg's moving ``testsrc2`` pattern (and a 440 Hz tone with ``audio``) encoded to
    ``path`` with ``CODECS[codec]`` (or encoder ``codec``) plus ``options``; written to a
    temporary name then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts: dict = dict(CODECS[codec]) if codec in CODECS else {"c:v": codec}
    opts.update(options)
    streams = [
        ffmpeg.input(f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", f="lavfi")
    ]
    if audio:
        streams.append(ffmpeg.input(f"sine=frequency=440:duration={seconds}", f="lavfi"))
        opts.setdefault("c:a", "aac")
    with atomic_path(path) as tmp:
        run(ffmpeg.output(*streams, str(tmp), **opts), path)
    return path
