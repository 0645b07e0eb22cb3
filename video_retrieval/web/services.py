"""Search and localization over an open index, without HTTP (the routes only parse and format).

``SearchService.search(query, k, rerank)`` returns the rows of ``vr search --json``
(``Hit.to_dict()``) plus each hit's index ``id`` and ``took_ms``. ``LocalizeService.localize(id,
query, top)`` returns the dict of ``video_retrieval.moments.localize.localize`` for an indexed video:

* with a moment head (``--localize-checkpoint``): ``MomentPredictor.predict`` on the video's clip
  encodings, which are computed once per video and kept in a small LRU (lighthouse's
  ``encode_video`` once, ``predict`` many times), so a second query on a video decodes nothing;
* without one: the zero-shot localizer (``moment_zeroshot.zero_shot_query``) over the index's own
  frame embeddings, pooled into ``clip_len``-second clips as ``moment_features.clip_features``
  pools decoded frames. Nothing is decoded.

Model use is serialised: every forward pass of a model holds that model's lock, so concurrent
requests share one copy of each model and never run two passes of it at once; the ANN, reranking
arithmetic and JSON work of other requests run meanwhile in the server's thread pool.

Example::

    >>> from video_retrieval.web import ServeConfig, load_state                 # doctest: +SKIP
    >>> state = load_state(ServeConfig(index="demo_out/index"))                 # doctest: +SKIP
    >>> state.search.search("a red circle moves left", k=3)["results"][0]["id"] # doctest: +SKIP
    17
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.media.files import display_path
from video_retrieval.moments.localize import DEFAULT_NMS_IOU, HEAD_NAMES, localization
from video_retrieval.web.config import MAX_K, MAX_QUERY_CHARS, MAX_TOP


class NotFound(UserError):
    """An id that names no indexed video (HTTP 404)."""


class StaleId(UserError):
    """An id from a search of an earlier version of the index (HTTP 409): ids are rows of the
    generation served, and an update may have given that row to another video."""


def check_text(query, what: str = "query") -> str:
    if not isinstance(query, str) or not query.strip():
        raise UserError(f"the {what} is empty: give a sentence")
    query = query.strip()
    if len(query) > MAX_QUERY_CHARS:
        raise UserError(
            f"the {what} has {len(query)} characters; the limit is {MAX_QUERY_CHARS} "
            "(the text encoder reads at most 77 tokens)"
        )
    return query


class Timings:
    """Request count and mean milliseconds per step (cf. clip-back's per-step histograms)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def add(self, step: str, ms: float) -> None:
        with self._lock:
            self._sum[step] = self._sum.get(step, 0.0) + ms
            self._n[step] = self._n.get(step, 0) + 1

    def reset(self) -> None:
        with self._lock:
            self._sum.clear()
            self._n.clear()

    def summary(self) -> dict:
        with self._lock:
            return {
                k: {"count": self._n[k], "mean_ms": round(self._sum[k] / self._n[k], 3)}
                for k in sorted(self._n)
            }


class SearchService:
    """Two-stage search with the models loaded once: the steps of
    ``video_retrieval.index.search.search_index`` (``encode_query``, ``stage_one``, ``rank_candidates``),
    with the text encoder (and a reranker that is a model) behind the model lock and the ANN and
    CLIPRerank arithmetic outside it, so concurrent searches overlap where they can."""

    def __init__(
        self,
        index,
        model_lock: threading.Lock,
        rerank: str = "auto",
        candidates: int = 100,
        alpha: float = 0.4,
        timings: Timings | None = None,
    ):
        from video_retrieval.index.search import get_reranker, resolve_rerank

        self.index = index
        self.generation = index.manifest.get("generation")
        self.lock = model_lock
        self.default_rerank = rerank
        self.candidates = int(candidates)
        self.alpha = float(alpha)
        self.timings = timings or Timings()
        # every reranker this service offers, built now (the lazy caches are not thread-safe)
        # every reranker vr search takes by name (a checkpoint only if the server was given it)
        self.rerankers = list(
            dict.fromkeys(["auto", "none", "cliprerank", "query_scored", "mean", rerank])
        )
        self.auto = resolve_rerank(index, "auto")
        # no request sees this index yet (start-up, or a reload building the next generation):
        # loading its ANN needs no lock, so searches on the served one go on meanwhile
        index.ann()
        with self.lock:
            self.encoder, self.pool_aggregator = index.models()
            self._built = {name: get_reranker(index, name, self.alpha) for name in self.rerankers}

    def search(self, query: str, k: int = 10, rerank: str | None = None) -> dict:
        from video_retrieval.index.queries import encode_query
        from video_retrieval.index.rerank import CLIPRerank
        from video_retrieval.index.search import rank_candidates, results_json, stage_one

        query = check_text(query)
        if not 1 <= int(k) <= MAX_K:
            raise UserError(f"k must be in 1..{MAX_K}, got {k}")
        rerank = rerank or self.default_rerank
        if rerank not in self._built:
            raise UserError(f"unknown rerank {rerank!r}: this server offers {self.rerankers}")
        reranker = self._built[rerank]
        words = bool(getattr(reranker, "needs_words", False))
        t0 = time.perf_counter()
        with self.lock:
            q = encode_query(self.encoder, self.pool_aggregator, query, words=words)
        t1 = time.perf_counter()
        base, rows = stage_one(self.index, q.embedding, max(self.candidates, int(k)))
        t2 = time.perf_counter()
        if reranker is None or isinstance(reranker, CLIPRerank):  # arithmetic on stored frames
            hits = rank_candidates(self.index, q, base, rows, reranker, int(k))
        else:  # a temporal model reranks: serialised like the encoder
            with self.lock:
                hits = rank_candidates(self.index, q, base, rows, reranker, int(k))
        t3 = time.perf_counter()
        for step, a, b in (("encode", t0, t1), ("ann", t1, t2), ("rerank", t2, t3)):
            self.timings.add(step, (b - a) * 1e3)
        took = (t3 - t0) * 1e3
        self.timings.add("search", took)
        used = self.auto if rerank == "auto" else rerank
        answer = results_json(query, hits, self.index, used)  # the rows of vr search --json
        for row in answer["results"]:
            row["video"] = display_path(row["video"])
        return {**answer, "took_ms": round(took, 3), "weights": self.index.weights}

    def search_example(self, k: int = 10, rerank: str | None = None, include_self: bool = False,
                       *, images=None, names=None, text=None, image_weight: float = 0.5,
                       video=None, video_label=None, like=None, start=None, end=None) -> dict:  # fmt: skip
        """A query by example (``images`` as file bytes or arrays, with ``text`` too: text +
        image; a ``video`` file; ``like``: an index id): the answer of ``vr search --image /
        --video / --like --json`` plus ``took_ms``. Encoding and pooling hold the model lock;
        ranking (stored frames) does not."""
        from video_retrieval.index.example_search import (
            example_results_json,
            rank_example,
            resolve_example_rerank,
        )
        from video_retrieval.index.examples import image_query, like_query, video_query
        from video_retrieval.media.image import read_image

        if not 1 <= int(k) <= MAX_K:
            raise UserError(f"k must be in 1..{MAX_K}, got {k}")
        if text is not None:
            text = check_text(text)
        t0 = time.perf_counter()
        if images is not None:
            names = list(names or [f"image {i + 1}" for i in range(len(images))])
            pixels = [read_image(x, what=n) for x, n in zip(images, names)]  # before the lock
            with self.lock:
                ex = image_query(self.index, self.encoder, self.pool_aggregator, pixels,
                                 text=text, image_weight=image_weight, names=names)  # fmt: skip
        elif video is not None:
            with self.lock:
                ex = video_query(self.index, self.encoder, self.pool_aggregator, video, start, end,
                                 label=video_label)  # fmt: skip
        else:
            with self.lock:  # a range is pooled by the aggregator (a model for seqTransf)
                ex = like_query(self.index, self.pool_aggregator, like, start, end)
        used = resolve_example_rerank(ex, rerank)
        t1 = time.perf_counter()
        hits = rank_example(self.index, ex, k=int(k), candidates=max(self.candidates, int(k)),
                            rerank=used, alpha=self.alpha, include_self=include_self)  # fmt: skip
        t2 = time.perf_counter()
        self.timings.add("example_encode", (t1 - t0) * 1e3)
        self.timings.add("example_rank", (t2 - t1) * 1e3)
        self.timings.add("example_search", (t2 - t0) * 1e3)
        answer = example_results_json(ex, hits, self.index, used)
        for row in answer["results"]:
            row["video"] = display_path(row["video"])
        if isinstance(answer["example"].get("video"), str):
            answer["example"]["video"] = display_path(answer["example"]["video"])
        took = round((t2 - t0) * 1e3, 3)
        return {**answer, "took_ms": took, "weights": self.index.weights}


def index_clip_features(frames: np.ndarray, ts: np.ndarray, duration: float, clip_len: float):
    """Stored frame embeddings [T,D] at times ``ts`` -> L2-normalised clip features [N,D], each
    the mean of its clip's normalised frames (the nearest frame when a clip has none)."""
    from video_retrieval.moments.features import clip_windows, num_clips_for

    order = np.argsort(ts, kind="stable")
    emb = np.asarray(frames, dtype=np.float64)[order]
    ts = np.asarray(ts, dtype=np.float64)[order]
    emb = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-8)
    if not duration or duration <= 0:
        duration = float(ts.max() + clip_len) if len(ts) else clip_len
    n = num_clips_for(duration, clip_len)
    feats = np.stack([emb[w].mean(0) for w in clip_windows(ts, n, clip_len)])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8
    return feats.astype(np.float32), float(duration)


MIN_CLIPS = 8


def zero_shot_clip_len(ts, duration: float, clip_len: float) -> float:
    """``clip_len``, or for a video shorter than ``MIN_CLIPS`` such clips the spacing of its
    indexed frames (no finer: a clip needs a frame), so a 4-s clip gets a curve, not 2 points."""
    if not duration or duration / clip_len >= MIN_CLIPS or len(ts) < 2:
        return float(clip_len)
    spacing = float(np.median(np.diff(np.sort(np.asarray(ts, dtype=np.float64)))))
    return round(min(clip_len, max(spacing, duration / MIN_CLIPS)), 3)


def _round_moments(rows) -> list[dict]:
    return [
        {"start": round(float(s), 3), "end": round(float(e), 3), "score": round(float(sc), 6)}
        for s, e, sc in (r[:3] for r in rows)
    ]


class LocalizeService:
    """Moments of a query inside an indexed video (see the module doc)."""

    def __init__(
        self,
        index,
        model_lock: threading.Lock,
        checkpoint: str | None = None,
        clip_len: float = 2.0,
        cached_videos: int = 16,
        timings: Timings | None = None,
    ):
        self.index = index
        self.lock = model_lock  # the index encoder's lock (zero-shot path)
        self.clip_len = float(clip_len)
        self.timings = timings or Timings()
        self.predictor = None
        self.head_lock = threading.Lock()  # the moment head and its own clip encoder
        self._encodings: OrderedDict[tuple, dict] = OrderedDict()
        self._cached_videos = max(1, int(cached_videos))
        self.encoded = 0  # videos encoded for the head (cache misses)
        self.checkpoint = checkpoint
        if checkpoint is not None:
            from video_retrieval.moments.predictor import MomentPredictor

            self.predictor = MomentPredictor.from_checkpoint(checkpoint)
        self.method = "head" if self.predictor is not None else "zero_shot"
        from video_retrieval.moments import zero_shot  # noqa: F401  (import cost paid at start-up)

    def video(self, vid) -> tuple[int, dict]:
        """Row and videos.json entry of an index id (int or its decimal string)."""
        try:
            row = int(vid)
        except (TypeError, ValueError):
            raise NotFound(f"unknown video id {vid!r}") from None
        if not 0 <= row < len(self.index.videos) or str(vid).strip() != str(row):
            raise NotFound(f"unknown video id {vid!r} (ids are 0..{len(self.index.videos) - 1})")
        return row, self.index.videos[row]

    def localize(self, vid, query: str, top: int = 5, nms_iou: float | None = DEFAULT_NMS_IOU):
        """``localize()``'s answer for indexed video ``vid`` (plus its ``id`` and ``took_ms``)."""
        row, entry = self.video(vid)
        query = check_text(query)
        if not 1 <= int(top) <= MAX_TOP:
            raise UserError(f"top must be in 1..{MAX_TOP}, got {top}")
        t0 = time.perf_counter()
        if self.predictor is not None:
            out = self._with_head(row, entry, query, int(top), nms_iou)
        else:
            out = self._zero_shot(row, entry, query, int(top), nms_iou)
        out["video"] = display_path(out["video"])
        took = (time.perf_counter() - t0) * 1e3
        self.timings.add("localize", took)
        return {"id": row, **out, "took_ms": round(took, 3)}

    def _zero_shot(self, row: int, entry: dict, query: str, top: int, nms_iou) -> dict:
        from video_retrieval.moments.zero_shot import zero_shot_query

        frames, ts = self.index.frames(row)
        duration = float(entry.get("duration", 0.0))
        clip_len = zero_shot_clip_len(ts, duration, self.clip_len)
        feats, duration = index_clip_features(frames, ts, duration, clip_len)
        encoder = self.index.models()[0]
        nms = nms_iou if nms_iou is not None and nms_iou >= 0 else 1.0
        with self.lock:
            rows, sims = zero_shot_query(encoder, feats, duration, query, clip_len, top, nms)
        return localization(
            entry["path"], query, rows, sims, clip_len, duration, method="zero_shot", top=top,
            nms_iou=nms_iou, features="index_frames", weights=self.index.weights,
        )  # fmt: skip

    def _with_head(self, row: int, entry: dict, query: str, top: int, nms_iou) -> dict:
        path = entry["path"]
        if not os.path.isfile(path):
            raise NotFound(f"video {row} ({display_path(path)}) is no longer on disk")
        st = os.stat(path)
        key = (row, path, st.st_size, st.st_mtime_ns)
        with self.head_lock:
            video = self._encodings.get(key)
            if video is None:
                video = self.predictor.encode_video(path)
                self.encoded += 1
                self._encodings[key] = video
                while len(self._encodings) > self._cached_videos:
                    self._encodings.popitem(last=False)
            else:
                self._encodings.move_to_end(key)
            pred = self.predictor.predict(path, query, top=max(3 * top, 10), video=video)
        head = str(self.predictor.meta.get("head", "moment_detr"))
        return localization(
            path, query, pred["moments"], pred.get("saliency", []),
            pred.get("clip_len", self.clip_len),
            pred.get("duration", entry.get("duration", 0.0)), method="head", top=top,
            nms_iou=nms_iou, head=HEAD_NAMES.get(head, head), windows=int(pred.get("windows", 1)),
            weights={"kind": "moment_checkpoint", "path": str(self.checkpoint)},
        )  # fmt: skip
