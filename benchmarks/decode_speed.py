"""Decode throughput of ``load_frames`` for sparse sampling, per backend.

Writes (once, cached) a 60 s 640x360 25 fps H.264 test video with the bundled ffmpeg (x264 defaults:
keyframe every 250 frames, B-frames), then times ``load_frames`` with num_frames=12 and fps=1
(60 frames) for decord and PyAV, plus the packet scan alone (``probe_video``), which every
``load_frames`` call includes. Prints frames/s and ms per call (median of --repeat runs).

    python benchmarks/decode_speed.py [--keyint 25] [--video PATH] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from video_retrieval.media.decode import load_frames, probe_video
from video_retrieval.media.pyav_backend import clear_scan_cache
from video_retrieval.media.write import write_test_pattern


def make_video(path: str, seconds: int = 60, keyint: int | None = None) -> str:
    if not os.path.exists(path):
        gop = {"g": keyint} if keyint else {}
        write_test_pattern(path, seconds, 640, 360, 25, codec="libx264", preset="veryfast",
                           pix_fmt="yuv420p", **gop)  # fmt: skip
    return path


def timeit(fn, repeat: int) -> float:
    """Median seconds per call, each call on a cold packet-scan cache (as for a new file)."""
    times = []
    for _ in range(repeat):
        clear_scan_cache()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="time this file instead of the generated one")
    ap.add_argument(
        "--keyint", type=int, help="keyframe interval of the generated video (x264: 250)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="decoder threads (0 = FFmpeg's choice)")
    args = ap.parse_args()
    name = f"vr_decode_bench_60s_640x360_g{args.keyint or 'default'}.mp4"
    path = args.video or make_video(os.path.join(tempfile.gettempdir(), name), keyint=args.keyint)
    info = probe_video(path)
    print(
        f"video: {path} {info.width}x{info.height} {info.num_frames} frames {info.duration:.1f}s {info.codec}"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    )
    scan = timeit(lambda: probe_video(path), args.repeat)
    quick = timeit(lambda: probe_video(path, exact=False), args.repeat)
    print(
        f"packet scan (probe_video, part of every call): {scan * 1000:.1f} ms; header probe {quick * 1000:.1f} ms"
    )
    for backend in ("decord", "pyav"):
        for label, kwargs in (("num_frames=12", {"num_frames": 12}), ("fps=1", {"fps": 1.0})):
            f = load_frames(
                path, backend=backend, threads=args.threads, **kwargs
            )  # warm-up + count
            n = int(f.mask.sum())
            sec = timeit(
                lambda k=kwargs, b=backend: load_frames(path, backend=b, threads=args.threads, **k),
                args.repeat,
            )
            print(
                f"{backend:7s} {label:14s} {n:3d} frames  {sec * 1000:8.1f} ms/call  {n / sec:7.1f} frames/s"
            )


if __name__ == "__main__":
    main()
