"""Browser-playable proxies for `vr serve`: whole-file cached H.264 MP4 vs a streamed window.

Source: a 60 s 1280x720 25 fps test pattern with a 440 Hz tone, in each non-playable codec asked
(default MPEG-4 part 2 in AVI and HEVC in MP4), written once under ``--work``.

* Cached proxy (what `vr serve` does): ``web.media.transcode_proxy`` per x264 preset: wall time
  (= the first request's time to first byte), speed (x real time, frames/s), size. Then through
  the app (TestClient, in-process HTTP): time to the first 64 KiB of the first request (the
  transcode) and of a later one (a seek into the cached file).
* Streamed window (the alternative): ffmpeg-python ``-ss S -t W`` to a fragmented MP4 on stdout:
  time to the first byte and to the end of a W-second window at S = 0 and S = 50 s.

    .venv/bin/python benchmarks/media_proxy.py --presets veryfast superfast ultrafast
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

SOURCES = {"mpeg4_avi": ("mpeg4", "avi"), "hevc_mp4": ("hevc", "mp4")}


def make_source(work: Path, name: str, seconds: float) -> Path:
    from video_retrieval.media.write import write_test_pattern

    codec, ext = SOURCES[name]
    path = work / f"{name}_{int(seconds)}s_720p.{ext}"
    if not path.is_file():
        opts = {"q:v": 4} if codec == "mpeg4" else {}  # typical camera/export quality
        write_test_pattern(path, seconds, 1280, 720, 25, codec=codec, audio=True, **opts)
    return path


def cached_proxy(src: Path, preset: str, out: Path) -> tuple[float, int]:
    """What `vr serve` runs (``transcode_proxy``) with x264 ``preset``: (seconds, bytes)."""
    from video_retrieval.web.media import media_info, transcode_proxy

    info = media_info(src)
    t0 = time.perf_counter()
    transcode_proxy(src, out, info, preset=preset)
    return time.perf_counter() - t0, out.stat().st_size


def streamed_window(
    src: Path, start: float, window: float, preset: str
) -> tuple[float, float, int]:
    """(time to the first playable fragment, time to the end, bytes) of a fragmented-MP4 window
    on stdout (the header alone comes at once and plays nothing); a fragment per keyframe, every
    2 s as in the proxy."""
    import ffmpeg

    from video_retrieval.media.write import ffmpeg_exe

    graph = ffmpeg.input(str(src), ss=start).output(
        "pipe:", t=window, format="mp4", movflags="frag_keyframe+empty_moov+default_base_moof",
        **{"c:v": "libx264", "preset": preset, "crf": 23, "pix_fmt": "yuv420p",
           "force_key_frames": "expr:gte(t,n_forced*2)", "c:a": "aac", "b:a": "128k"},
    ).global_args("-loglevel", "error", "-nostdin")  # fmt: skip
    t0 = time.perf_counter()
    proc = graph.run_async(cmd=ffmpeg_exe(), pipe_stdout=True)
    data, ttfb = b"", None
    while chunk := proc.stdout.read1(1 << 16):
        data += chunk
        if ttfb is None and b"moof" in data:  # the first fragment with frames (not the header)
            ttfb = time.perf_counter() - t0
    proc.wait()
    return ttfb or float("nan"), time.perf_counter() - t0, len(data)


def through_the_app(src: Path, work: Path) -> tuple[float, float]:
    """Seconds to the first 64 KiB of /media for the first request and for a later one."""
    from fastapi.testclient import TestClient

    from video_retrieval.index.api import Index
    from video_retrieval.models.assets import DEMO_RETRIEVAL
    from video_retrieval.web.app import create_app
    from video_retrieval.web.config import ServeConfig

    idx_dir = work / f"index_{src.stem}"
    Index.build([src], idx_dir, checkpoint=str(DEMO_RETRIEVAL), num_frames=4, progress=False)
    cache = Path(tempfile.mkdtemp(prefix="proxy_cache_", dir=work))
    app = create_app(ServeConfig(index=idx_dir, cache_dir=cache))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        times = []
        for rng in ("bytes=0-65535", "bytes=1000000-1065535"):
            t0 = time.perf_counter()
            r = c.get("/media/0", headers={"Range": rng})
            assert r.status_code == 206, r.text
            times.append(time.perf_counter() - t0)
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vr_media_proxy")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--presets", nargs="+", default=["veryfast", "superfast", "ultrafast"])
    ap.add_argument("--window", type=float, default=10.0)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    for name in args.sources:
        src = make_source(args.work, name, args.seconds)
        print(f"\nsource {src.name}: {src.stat().st_size / 2**20:.1f} MiB")
        for preset in args.presets:
            out = args.work / f"proxy_{name}_{preset}.mp4"
            wall, size = cached_proxy(src, preset, out)
            frames = args.seconds * 25
            print(f"  cached proxy, x264 {preset:>9}: {wall:5.1f} s = "
                  f"{args.seconds / wall:4.1f}x real time ({frames / wall:5.0f} frames/s), "
                  f"{size / 2**20:.1f} MiB")  # fmt: skip
        first, later = through_the_app(src, args.work)
        print(f"  through the app: first 64 KiB after {first:.2f} s (transcode), "
              f"a later ranged request {later * 1e3:.1f} ms")  # fmt: skip
        for start in (0.0, min(50.0, args.seconds - args.window)):
            ttfb, total, size = streamed_window(src, start, args.window, args.presets[0])
            print(f"  streamed {args.window:g} s window at {start:g} s ({args.presets[0]}): "
                  f"first fragment {ttfb:.2f} s, "
                  f"complete {total:.2f} s, {size / 2**20:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
