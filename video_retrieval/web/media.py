"""What the browser is sent: the video file itself, a browser-playable proxy, or a thumbnail.

Playability (``media_info``, read with PyAV)
    Browsers play H.264 (8-bit 4:2:0), VP9 and AV1 in MP4/MOV, and VP8, VP9 and AV1 in WebM
    (Matroska with those codecs is served as ``video/webm``), with AAC/MP3/Opus/FLAC audio in MP4
    and Opus/Vorbis in WebM. Headless Chromium 156 on Debian 12 (``canPlayType``) confirms H.264,
    VP9 and AV1 and refuses HEVC, MPEG-4 part 2 and AVI. Everything else (MPEG-4 part 2 AVI,
    MJPEG, HEVC, ProRes, H.264 4:4:4, MPEG-2 TS, ...) gets a proxy.

Proxies (``ProxyCache``)
    One H.264 MP4 per source file, transcoded with ffmpeg-python on the first request and cached
    on disk (``+faststart`` so playback starts before the download ends, a keyframe every 2 s so
    a seek lands within 2 s, at most 720 lines, AAC audio when the source has sound). A whole-file
    proxy keeps what the page needs: Range requests, seeking anywhere on the timeline, every band
    of the saliency curve, and a second view costs nothing; a streamed window (``-ss``/``-t`` to
    a fragmented MP4) starts sooner but cannot seek outside itself and is transcoded again for
    every view. x264 ``ultrafast``: on 2 cores a 60 s 720p MPEG-4 AVI takes 4 s (15x real time)
    against 12 s with ``veryfast``, for a file about as big as the source (BENCHMARKS.md). The
    cost is the first view of a long file: about its duration / 15 at 720p. One transcode runs
    at a time (ffmpeg uses every core); concurrent requests for one file wait for the same run.

Thumbnails (``ThumbnailCache``)
    A JPEG of the frame presented at ``t`` (quantised to 0.1 s), decoded with the project's
    decoder (``video_retrieval.media.decode.load_frames``), short side at most 180 px.

Exported moments (``ClipCache``)
    The MP4s of ``GET /media/{id}/clip`` (``media.cut``: an exact H.264 cut, or a stream copy
    from a keyframe), cut on the first request and cached.

The caches live beside the index (``<index>/serve_cache/{media,thumbs,clips}``), are bounded in bytes,
drop the least recently used files first, and key every file by the source's path, size and
mtime, so a re-encoded source never gets a stale proxy.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import av

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path

log = logging.getLogger("video_retrieval.web")

PROXY_PRESET = "ultrafast"  # x264 speed/size trade-off: BENCHMARKS.md, "Browser-playable proxies"
PROXY_SETTINGS = f"h264-crf23-{PROXY_PRESET}-kf2s-720-v1"  # part of every proxy's cache key
THUMB_SHORT_SIDE = 180
THUMB_STEP_S = 0.1

# (video codecs, audio codecs) browsers play, per container family
PLAYABLE: dict[str, tuple[frozenset, frozenset]] = {
    "mp4": (frozenset({"h264", "vp9", "av1"}), frozenset({"aac", "mp3", "opus", "flac"})),
    "webm": (frozenset({"vp8", "vp9", "av1"}), frozenset({"opus", "vorbis"})),
}
MIME = {"mp4": "video/mp4", "webm": "video/webm"}
H264_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})  # 8-bit 4:2:0: what browsers decode


@dataclass(frozen=True)
class MediaInfo:
    container: str  # FFmpeg demuxer name
    video_codec: str
    pix_fmt: str
    height: int
    audio_codecs: tuple[str, ...]
    playable: bool
    mime: str  # of the file as served ("video/mp4" for every proxy)
    reason: str  # why a proxy is needed ("" when the file plays as it is)


def _family(container: str) -> str:
    names = set(container.split(","))
    if names & {"mp4", "mov"}:
        return "mp4"
    if names & {"webm", "matroska"}:
        return "webm"
    return container


def media_info(path) -> MediaInfo:
    """Container, codecs and whether browsers play ``path`` as it is (see the module doc)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise UserError(f"{path}: no video stream")
            v = c.streams.video[0]
            ctx = v.codec_context
            vcodec = ctx.name if ctx is not None else "unknown"
            pix = (ctx.pix_fmt or "") if ctx is not None else ""
            height = int(ctx.height or 0) if ctx is not None else 0
            acodecs = tuple(
                a.codec_context.name for a in c.streams.audio if a.codec_context is not None
            )
            container = c.format.name
    except av.error.FFmpegError as exc:
        raise UserError(f"{path}: not a readable video ({exc})") from None
    family = _family(container)
    reason = ""
    if family not in PLAYABLE:
        reason = f"container {container} does not play in browsers"
    else:
        vok, aok = PLAYABLE[family]
        if vcodec not in vok:
            reason = f"{vcodec} video in {family} does not play in browsers"
        elif vcodec == "h264" and pix not in H264_PIX_FMTS:
            reason = f"H.264 {pix} (browsers decode 8-bit 4:2:0 only)"
        elif any(a not in aok for a in acodecs):
            reason = f"audio {', '.join(acodecs)} in {family} does not play in browsers"
    playable = not reason
    mime = MIME[family] if playable else "video/mp4"
    return MediaInfo(container, vcodec, pix, height, acodecs, playable, mime, reason)


def source_key(path, *parts) -> str:
    """A cache key for ``path`` as it is now (path, size, mtime) plus ``parts``."""
    st = os.stat(path)
    raw = "\0".join([os.path.abspath(path), str(st.st_size), str(st.st_mtime_ns), *map(str, parts)])
    return hashlib.sha256(os.fsencode(raw)).hexdigest()[:32]  # names are bytes on disk


class DiskCache:
    """Files in one folder, at most ``max_bytes`` in total, least recently used dropped first.

    ``get_or_make(name, make)`` returns the cached file or runs ``make(tmp_path)`` once (other
    threads asking for the same name wait for that run), renames the result into place and evicts
    old files. A file larger than the whole budget is still served, then evicted by the next one.
    """

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self.hits = 0
        self.misses = 0

    def _files(self) -> list[os.DirEntry]:
        try:
            return [e for e in os.scandir(self.root) if e.is_file() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def usage(self) -> tuple[int, int]:
        """(files, bytes) now in the cache."""
        files = self._files()
        return len(files), sum(e.stat().st_size for e in files)

    def get_or_make(self, name: str, make) -> Path:
        path = self.root / name
        with self._lock:
            if path.is_file():
                self.hits += 1
                try:
                    os.utime(path)  # recently used
                except FileNotFoundError:
                    pass
                else:
                    return path
            fut = self._inflight.get(name)
            owner = fut is None
            if owner:
                fut = self._inflight[name] = Future()
                self.misses += 1
        if not owner:
            return fut.result()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                make(tmp)
            self._evict(keep=path)
            fut.set_result(path)
            return path
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(name, None)

    def _evict(self, keep: Path) -> None:
        with self._lock:
            files = sorted(self._files(), key=lambda e: e.stat().st_mtime_ns)
            total = sum(e.stat().st_size for e in files)
            for e in files:
                if total <= self.max_bytes:
                    break
                if e.path == str(keep):
                    continue
                size = e.stat().st_size
                Path(e.path).unlink(missing_ok=True)
                total -= size


class ProxyCache:
    """Browser-playable H.264 MP4 proxies of non-playable sources (see the module doc)."""

    def __init__(self, root, max_bytes: int, timeout_s: float = 900.0):
        self.cache = DiskCache(root, max_bytes)
        self.timeout_s = timeout_s
        self._one_at_a_time = threading.Lock()
        self.transcodes = 0

    def get(self, src, info: MediaInfo) -> Path:
        name = source_key(src, PROXY_SETTINGS) + ".mp4"

        def make(tmp: Path) -> None:
            with self._one_at_a_time:
                transcode_proxy(src, tmp, info, timeout_s=self.timeout_s)
                self.transcodes += 1

        return self.cache.get_or_make(name, make)


def transcode_proxy(
    src, dst, info: MediaInfo | None = None, timeout_s: float | None = None, preset: str = ""
):
    """H.264/AAC MP4 of ``src`` for browsers: CRF 23 at x264 ``preset`` (default
    ``PROXY_PRESET``), yuv420p, at most 720 lines, a keyframe every 2 s, ``+faststart``; audio
    only when the source has some."""
    import ffmpeg

    from video_retrieval.media.write import run

    info = info or media_info(src)
    inp = ffmpeg.input(str(src))
    # even sizes for yuv420p; never upscale; 720 lines at most; limited (TV) range, as players
    # expect (MJPEG sources are full range)
    video = inp.video.filter("scale", -2, "trunc(min(720,ih)/2)*2", out_range="tv")
    streams = [video]
    opts = {
        "c:v": "libx264",
        "preset": preset or PROXY_PRESET,
        "crf": 23,
        "pix_fmt": "yuv420p",
        "force_key_frames": "expr:gte(t,n_forced*2)",
        "movflags": "+faststart",
        "format": "mp4",
    }
    if info.audio_codecs:
        streams.append(inp.audio)
        opts.update({"c:a": "aac", "b:a": "128k"})
    run(ffmpeg.output(*streams, str(dst), **opts), src, timeout=timeout_s)
    return Path(dst)


class ClipCache:
    """Exported moments (``GET /media/{id}/clip``): MP4s cut by ``media.cut.cut_clip``, kept
    on disk (bounded, least recently used first) so a second download costs nothing; one cut at
    a time (ffmpeg uses every core)."""

    def __init__(self, root, max_bytes: int, timeout_s: float = 900.0):
        self.cache = DiskCache(root, max_bytes)
        self.timeout_s = timeout_s
        self._one_at_a_time = threading.Lock()
        self.cuts = 0

    def get(self, src, start: float, end: float, copy: bool = False) -> Path:
        from video_retrieval.media.cut import cut_clip

        mode = "copy" if copy else "exact"
        name = source_key(src, "clip-v1", mode, f"{start:.6f}", f"{end:.6f}") + ".mp4"

        def make(tmp: Path) -> None:
            with self._one_at_a_time:
                cut_clip(src, start, end, tmp, copy=copy, timeout=self.timeout_s)
                self.cuts += 1

        return self.cache.get_or_make(name, make)


class ThumbnailCache:
    """JPEG keyframes of indexed videos (see the module doc)."""

    def __init__(self, root, max_bytes: int, decoders: int = 2):
        self.cache = DiskCache(root, max_bytes)
        self._decoders = threading.BoundedSemaphore(decoders)

    def get(self, src, t: float, duration: float) -> Path:
        t = min(max(0.0, round(float(t) / THUMB_STEP_S) * THUMB_STEP_S), max(0.0, duration))
        name = f"{source_key(src, THUMB_SHORT_SIDE)}-{int(round(t * 1000))}.jpg"

        def make(tmp: Path) -> None:
            with self._decoders:
                tmp.write_bytes(thumbnail_jpeg(src, t, duration))

        return self.cache.get_or_make(name, make)


def thumbnail_jpeg(src, t: float, duration: float, short_side: int = THUMB_SHORT_SIDE) -> bytes:
    """JPEG bytes of the frame presented at ``t`` seconds (short side at most ``short_side``)."""
    from PIL import Image

    from video_retrieval.media.decode import load_frames, probe_video

    info = probe_video(src, exact=False)
    size = short_side if min(info.width, info.height) > short_side else None
    lo = max(0.0, min(t, duration) - 1e-3)  # one sample at the midpoint: the frame shown at t
    fr = load_frames(src, num_frames=1, start=lo, end=lo + 2e-3, size=size)
    buf = io.BytesIO()
    Image.fromarray(fr.pixels[0]).save(buf, format="JPEG", quality=85)
    return buf.getvalue()
