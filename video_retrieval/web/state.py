"""Everything ``vr serve`` loads once, before it accepts a request (cf. clip-back's ``ClipResource``).

``load_state(config)`` opens the index, builds its encoder, pooling aggregator, ANN and every
offered reranker, loads the moment head when one is given, and sets up the bounded thumbnail and
proxy caches. Routes receive the ``ServiceState`` through ``deps.StateDep``; nothing is loaded
lazily inside a request.

When ``vr index`` updates the index (a new generation: its manifest switches in one rename),
``ServiceState.reload_if_changed`` opens the new generation beside the old one, keeps the loaded
models (the index must still name the same model; another model needs a restart, which it says),
builds the new ANN and rerankers, and then swaps them in: requests already running finish on the
old generation, later ones see the new. ``vr serve`` checks every ``--reload-interval`` seconds
(``IndexWatcher``) and on ``POST /api/reload``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from video_retrieval.web.config import ServeConfig
from video_retrieval.web.media import ClipCache, MediaInfo, ProxyCache, ThumbnailCache, media_info
from video_retrieval.web.services import (
    LocalizeService,
    NotFound,
    SearchService,
    StaleId,
    Timings,
)

log = logging.getLogger("video_retrieval.web")


@dataclass
class ServiceState:
    config: ServeConfig
    index: object  # video_retrieval.index.api.Index
    search: SearchService
    localize: LocalizeService
    thumbs: ThumbnailCache
    proxies: ProxyCache
    timings: Timings
    load_seconds: float
    _media: dict = field(default_factory=dict)
    _media_lock: threading.Lock = field(default_factory=threading.Lock)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)
    reloads: int = 0
    reload_error: str | None = None  # why the index on disk is not the one served, if it is not
    examples: list[str] = field(default_factory=list)  # queries to suggest on the start page
    clips: ClipCache | None = None  # exported moments (GET /media/{id}/clip)

    def reload_if_changed(self) -> bool:
        """Serve the index's current generation if it is not the one served (see the module
        doc); True when it swapped. A failure keeps the served generation, is logged once and
        is kept in ``reload_error`` (``/api/info``) until a reload succeeds."""
        from video_retrieval.index.api import Index
        from video_retrieval.index.files import read_manifest

        with self._reload_lock:
            old = self.index
            try:
                manifest = read_manifest(old.dir)
                if manifest is None or manifest == old.manifest or not manifest.get("complete"):
                    return False
                new = Index.open(old.dir)
                new.share_models(old)
                search = search_service(self.config, new, self.search.lock, self.timings)
            except Exception as exc:  # noqa: BLE001  (any failure: keep serving the old one)
                message = f"{old.dir} changed on disk but was not reloaded: {exc}"
                if message != self.reload_error:
                    log.error("%s", message)
                self.reload_error = message
                return False
            # one reference each: a request reads either the old objects or the new ones
            self.search = search
            self.localize.index = new
            self.index = new
            self.examples = example_queries(new)
            self.reloads += 1
            self.reload_error = None
            log.info(
                "reloaded %s: generation %s, %d videos (was %d)",
                new.dir, new.manifest.get("generation"), len(new), len(old),
            )  # fmt: skip
            return True

    def run_search(self, query: str, k: int = 10, rerank: str | None = None) -> dict:
        """``search.search``; when an update removed the generation being served before the
        watcher swapped it (``GenerationGone``), reload now and search the new one."""
        from video_retrieval.index.store import GenerationGone

        try:
            return self.search.search(query, k=k, rerank=rerank)
        except GenerationGone:
            self.reload_if_changed()
            return self.search.search(query, k=k, rerank=rerank)

    def run_example(self, **query) -> dict:
        """``search.search_example`` (a query by example), retried on the newest generation
        as ``run_search`` is."""
        from video_retrieval.index.store import GenerationGone

        try:
            return self.search.search_example(**query)
        except GenerationGone:
            self.reload_if_changed()
            return self.search.search_example(**query)

    def video(self, vid) -> tuple[int, dict]:
        return self.localize.video(vid)

    def check_generation(self, g: int | None) -> None:
        """``StaleId`` when ``g`` (the generation a search result came from: its URLs carry
        ``g=``) is not the generation served; ``None`` skips the check."""
        now = self.index.manifest.get("generation")
        if g is not None and g != now:
            raise StaleId(
                f"the index was updated since this result was found (version {g}, now {now}): "
                "search again"
            )

    def source(self, vid) -> tuple[int, dict, str]:
        """Row, entry and path of an indexed video that is still on disk (else ``NotFound``)."""
        row, entry = self.video(vid)
        path = entry["path"]
        if not os.path.isfile(path):
            raise NotFound(f"video {row} ({Path(path).name}) is no longer on disk")
        return row, entry, path

    def media(self, path: str) -> MediaInfo:
        """``media_info`` of ``path``, remembered per (path, size, mtime)."""
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with self._media_lock:
            info = self._media.get(key)
        if info is None:
            info = media_info(path)
            with self._media_lock:
                if len(self._media) > 4096:
                    self._media.clear()
                self._media[key] = info
        return info

    def info(self) -> dict:
        from video_retrieval.models.weights import weights_line

        idx = self.index
        seconds = sum(float(v.get("duration") or 0.0) for v in idx.videos)
        return {
            "index": str(idx.dir),
            "videos": len(idx),
            "hours": round(seconds / 3600, 3),
            "model": weights_line(idx.weights),
            "weights": idx.weights,
            "examples": self.examples,
            "default_k": DEFAULT_K,
            "localize_head": getattr(self.localize.predictor, "meta", {}).get("head"),
            "frames": int(idx.manifest.get("counts", {}).get("frames", 0)),
            "ann": idx.manifest.get("ann"),
            "fingerprint": idx.fingerprint,
            "generation": idx.manifest.get("generation"),
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "rerankers": self.search.rerankers,
            "default_rerank": self.search.default_rerank,
            "auto_rerank": self.search.auto,
            "localize_method": self.localize.method,
            "limits": limits(),
            "load_seconds": round(self.load_seconds, 3),
            "timings": self.timings.summary(),
            "caches": {
                "thumbnails": dict(zip(("files", "bytes"), self.thumbs.cache.usage())),
                "proxies": dict(zip(("files", "bytes"), self.proxies.cache.usage())),
                "proxy_transcodes": self.proxies.transcodes,
                "clips": dict(zip(("files", "bytes"), self.clips.cache.usage()))
                if self.clips is not None
                else None,
                "moment_encodings": self.localize.encoded,
            },
        }


def limits() -> dict:
    from video_retrieval.web import config as c

    return {
        "max_query_chars": c.MAX_QUERY_CHARS,
        "max_k": c.MAX_K,
        "max_batch": c.MAX_BATCH,
        "max_top": c.MAX_TOP,
        "max_images": c.MAX_IMAGES,
        "max_upload_bytes": c.MAX_UPLOAD_BYTES,
        "max_clip_seconds": c.MAX_CLIP_SECONDS,
    }


def set_threads(n: int) -> None:
    """Threads of torch's and FAISS's kernels, process-wide (``vr serve --threads``, default 1):
    a one-query forward pass is too small to split, and requests already run side by side in the
    server's thread pool. On the busy 2-core machine of BENCHMARKS.md a search took 40 ms with 2
    threads and 8 ms with 1, and FAISS's exact search 0.45 ms on average with 1 OpenMP thread
    against 16 ms with 2 (thread wake-ups). Left to the entry point: a library call changes no
    global state. OpenMP's setting is per thread, so the CLI also sets ``OMP_NUM_THREADS`` before
    anything loads, which every request thread inherits."""
    if n < 1:
        from video_retrieval.errors import UserError

        raise UserError(f"--threads must be >= 1, got {n}")
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def search_service(config: ServeConfig, index, model_lock, timings) -> SearchService:
    """The ``SearchService`` of ``config`` over ``index`` (at start-up and at each reload)."""
    return SearchService(index, model_lock, config.rerank, config.candidates, config.alpha, timings)


def load_state(config: ServeConfig) -> ServiceState:
    """Load the index and every model once (seconds); see the module doc."""
    from video_retrieval.index.api import Index

    config.check()
    t0 = time.perf_counter()
    index = Index.open(config.index)
    timings = Timings()
    model_lock = threading.Lock()  # the index's encoder: one forward pass at a time
    search = search_service(config, index, model_lock, timings)
    localize = LocalizeService(
        index,
        model_lock,
        checkpoint=config.localize_checkpoint,
        clip_len=config.clip_len,
        cached_videos=config.encodings_cached,
        timings=timings,
    )
    root = config.cache_root
    thumbs = ThumbnailCache(root / "thumbs", int(config.thumb_cache_mb * 2**20))
    proxies = ProxyCache(
        root / "media", int(config.media_cache_mb * 2**20), config.transcode_timeout_s
    )
    if len(index):  # warm-up: the first forward pass allocates; do it before serving
        search.search("warm-up", k=1)
        if localize.predictor is None:  # (the head would decode a video: not at start-up)
            localize.localize(0, "warm-up", top=1)
        timings.reset()
    seconds = time.perf_counter() - t0
    log.info("loaded %s (%d videos) in %.1f s", config.index, len(index), seconds)
    state = ServiceState(config, index, search, localize, thumbs, proxies, timings, seconds)
    state.clips = ClipCache(
        root / "clips", int(config.clip_cache_mb * 2**20), config.transcode_timeout_s
    )
    state.examples = example_queries(index)
    return state


#: results the page and the API return when not told otherwise (vr search's -k default too)
DEFAULT_K = 10


def example_queries(index, n: int = 4) -> list[str]:
    """Up to ``n`` captions of indexed videos, from a ``captions.jsonl`` beside them (in a
    folder of indexed videos or its parent, as ``vr synth`` and MSR-VTT-style folders keep it),
    one per video, for the start page; empty when there is none."""
    import json

    paths = {v["path"] for v in index.videos}
    folders = {Path(p).parent for p in paths}
    found: list[str] = []
    for f in sorted(folders | {d.parent for d in folders}):
        jsonl = f / "captions.jsonl"
        if not jsonl.is_file():
            continue
        try:
            lines = jsonl.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        seen = set()
        for line in lines:
            try:
                row = json.loads(line)
                video = str((f / row["video"]).resolve())
                caption = str(row["caption"]).strip()
            except (ValueError, KeyError, TypeError):
                continue
            if video in paths and video not in seen and caption:
                seen.add(video)
                found.append(caption)
    step = max(1, len(found) // n)  # spread over the collection, not its first videos
    return found[::step][:n]


class IndexWatcher:
    """A daemon thread that calls ``state.reload_if_changed()`` every ``interval`` seconds
    (``vr serve --reload-interval``) until ``stop()``."""

    def __init__(self, get_state, interval: float):
        self.get_state = get_state
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vr-index-watcher", daemon=True)

    def start(self) -> IndexWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            state = self.get_state()
            if state is not None:
                state.reload_if_changed()  # logs and keeps its own errors

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
