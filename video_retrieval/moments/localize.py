"""Query one video: where does the sentence happen?

``localize(video, query)`` returns a ``schemas.Localization`` as a dict: ``{"video", "query",
"moments": [{"start", "end", "score"}], "saliency": [...], "saliency_unit", "clip_len",
"duration", "method" ("head" or "zero_shot"), "head" ("QD-DETR" / "Moment-DETR"), "features",
"nms_iou", "weights"}``. With a
moment checkpoint (``checkpoint=``) the trained moment head (``moment_predictor.MomentPredictor``) predicts the
windows, over sliding windows of its trained length when the video is longer; without one, the
zero-shot baseline
scores each 2-s clip by the cosine between its CLIP embedding and the query and ranks candidate
windows with ``moment_zeroshot.zero_shot_windows``; with ``clip_encoder=`` (a ``vr train``
retrieval checkpoint such as ``configs/moments_synth_clips.yaml`` writes) each clip is instead its
aggregator's embedding of the clip's frames +-1 s (``moment_features.load_clip_encoder``), scored
against the checkpoint's own text tower. ``saliency`` is the per-clip score curve
(one value per ``clip_len`` seconds). ``plot=`` writes a PNG of that curve (its y-axis says
whether it is a head's saliency or a zero-shot similarity) with a lane per predicted moment, the
ground truth in its own lane when given (``ground_truth=``), a legend and a few thumbnails.

Example::

    >>> from video_retrieval import localize
    >>> out = localize("videos/cooking.mp4", "someone cracks an egg", top=3)   # doctest: +SKIP
    >>> out["moments"][0]                                                       # doctest: +SKIP
    {'start': 12.0, 'end': 18.0, 'score': 0.87}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.limits import check
from video_retrieval.schemas import Localization, Moment


def _check(video, query) -> tuple[str, str]:
    """The video's absolute path and the stripped query."""
    if not isinstance(query, str) or not query.strip():
        raise UserError("the query is empty: give a sentence to localize")
    p = Path(video).expanduser()
    if not p.is_file():
        raise UserError(f"no such video file: {video}")
    return str(p.resolve()), query.strip()


def check_whole_video(path: str) -> None:
    """A truncated video (its decodable frames end well before the duration its container
    declares) is refused, as ``vr index`` refuses it, rather than localized in its first
    seconds."""
    from video_retrieval.media.decode import probe_video, truncation

    info = probe_video(path)
    why = truncation(info.duration, info.header_duration)
    if why:
        raise UserError(f"{path}: {why}")


#: the trained heads' names, as the answers say them
HEAD_NAMES = {"moment_detr": "Moment-DETR", "qd_detr": "QD-DETR"}
#: moments overlapping a better one by more than this IoU are not returned
DEFAULT_NMS_IOU = 0.5


def localization(
    video, query: str, rows, saliency, clip_len: float, duration: float, *, method: str,
    top: int, nms_iou: float | None = DEFAULT_NMS_IOU, head: str | None = None,
    features: str | None = None, windows: int = 1, weights: dict | None = None,
) -> dict:  # fmt: skip
    """The answer of every localizer (``schemas.Localization`` as a dict): the candidate
    ``rows`` ``[[start, end, score in [0, 1]], ...]`` reduced by temporal NMS (``nms_iou``;
    None or a negative value: none) to the best ``top``."""
    from video_retrieval.temporal.moment_matcher import temporal_nms

    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if nms_iou is not None and nms_iou >= 0 and len(rows):
        rows = temporal_nms(rows, nms_iou, max_keep=top)
    rows = rows[np.argsort(-rows[:, 2], kind="stable")][:top]
    moments = [Moment(start=round(float(s), 3), end=round(float(e), 3),
                      score=round(min(1.0, max(0.0, float(sc))), 6)) for s, e, sc in rows]  # fmt: skip
    return Localization(
        video=str(video), query=query, duration=round(float(duration), 3),
        clip_len=float(clip_len), method=method, head=head, features=features,
        windows=int(windows), nms_iou=nms_iou if nms_iou is not None and nms_iou >= 0 else None,
        moments=moments, saliency=[round(float(x), 6) for x in saliency],
        saliency_unit="logit" if method == "head" else "cosine", weights=weights or {},
    ).model_dump()  # fmt: skip


class ZeroShotLocalizer:
    """The training-free localizer: per-clip CLIP features (frame means, or a retrieval
    checkpoint's aggregator over each clip +-1 s) scored against the query's sentence embedding
    (``moment_zeroshot``). The last video's features are kept, so many queries on one video
    encode it once."""

    def __init__(self, encoder, pool=None, pool_kw: dict | None = None, clip_len: float = 2.0,
                 weights: dict | None = None):  # fmt: skip
        self.encoder = encoder.eval()
        self.pool, self.pool_kw = pool, dict(pool_kw or {})
        self.clip_len = float(clip_len)
        self.weights = weights or {}
        self.features = "frames" if pool is None else "pooled_clips"
        self._last: tuple[str, tuple] | None = None

    @classmethod
    def build(cls, model=None, pretrained=None, clip_encoder=None, encoder=None,
              random_weights: bool = False, clip_len: float = 2.0) -> ZeroShotLocalizer:  # fmt: skip
        """From a retrieval checkpoint (``clip_encoder``), a loaded ``encoder``, or the model
        flags (``models.weights.resolve_encoder_args``: no silent random weights)."""
        from video_retrieval.models.weights import (
            describe_weights,
            resolve_encoder_args,
            warn_if_random,
        )

        if clip_encoder is not None:
            from video_retrieval.moments.features import load_clip_encoder

            enc, pool, pool_kw = load_clip_encoder(clip_encoder)
            return cls(enc, pool, pool_kw, clip_len, describe_weights(None, str(clip_encoder)))
        if encoder is None:
            from video_retrieval.encoders.factory import create_encoder

            encoder = create_encoder(
                **resolve_encoder_args(model, pretrained, None, "open_clip", random_weights)
            )
        weights = describe_weights(getattr(encoder, "spec", None))
        warn_if_random(weights)
        return cls(encoder, None, None, clip_len, weights)

    def encode_video(self, path) -> tuple[np.ndarray, np.ndarray, float]:
        """(clip features [N,D], clip times [N,2], duration) of ``path``."""
        from video_retrieval.moments.features import clip_features

        path = str(path)
        if self._last is None or self._last[0] != path:
            feats = clip_features(
                self.encoder, path, clip_len=self.clip_len, aggregator=self.pool, **self.pool_kw
            )
            self._last = (path, feats)
        return self._last[1]

    def predict(self, path, query: str, top: int = 5, nms_iou: float = DEFAULT_NMS_IOU
                ) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
        """(windows [K,3] seconds + score, per-clip similarities [N], duration)."""
        from video_retrieval.moments.zero_shot import zero_shot_query

        feats, _, duration = self.encode_video(path)
        nms = nms_iou if nms_iou is not None and nms_iou >= 0 else 1.0
        rows, sims = zero_shot_query(self.encoder, feats, duration, query, self.clip_len, top, nms)
        return rows, sims, duration


def localize(
    video,
    query: str,
    checkpoint=None,
    top: int = 5,
    model: str | None = None,
    pretrained: str | None = None,
    encoder=None,
    clip_len: float = 2.0,
    plot=None,
    clip_encoder=None,
    random_weights: bool = False,
    predictor=None,
    ground_truth=None,
    nms_iou: float | None = DEFAULT_NMS_IOU,
) -> dict:
    """Top-``top`` moments of ``query`` in ``video`` (seconds), best first; see module doc.

    The model: ``checkpoint`` (a trained moment head, or an already loaded ``predictor``),
    ``clip_encoder`` (a retrieval checkpoint pooling clips), ``encoder`` (a loaded CLIP), or
    ``model``/``pretrained`` resolved as ``vr index`` does (default ``ViT-B-32`` /
    ``laion2b_s34b_b79k``; ``random_weights=True`` only for tests). ``ground_truth``
    (``[[start, end], ...]`` seconds, when known) is drawn as its own band in the ``plot``.
    ``nms_iou``: a moment overlapping a better one by more than this IoU is not returned
    (default 0.5; None: every window the localizer ranks).
    """
    path, query = _check(video, query)
    top = check("top", top, "--top")
    if checkpoint is not None or predictor is not None:
        if predictor is None:
            if not os.path.exists(checkpoint):
                raise UserError(f"no such checkpoint: {checkpoint}")
            from video_retrieval.moments.predictor import MomentPredictor

            predictor = MomentPredictor.from_checkpoint(checkpoint)
        check_whole_video(path)
        # more candidates than asked: temporal NMS then keeps the best distinct ``top``
        pred = predictor.predict(path, query, top=max(3 * top, 10))
        head = str(predictor.meta.get("head", "moment_detr"))
        result = localization(
            path, query, pred["moments"], pred["saliency"], pred["clip_len"], pred["duration"],
            method="head", top=top, nms_iou=nms_iou, head=HEAD_NAMES.get(head, head),
            windows=int(pred.get("windows", 1)),
            weights={"kind": "moment_checkpoint", "path": str(checkpoint or "")},
        )  # fmt: skip
    else:
        zs = ZeroShotLocalizer.build(
            model, pretrained, clip_encoder, encoder, random_weights, clip_len=clip_len
        )
        check_whole_video(path)
        rows, sims, duration = zs.predict(path, query, top, nms_iou)
        result = localization(
            path, query, rows, sims, clip_len, duration, method="zero_shot", top=top,
            nms_iou=nms_iou, features=zs.features, weights=zs.weights,
        )  # fmt: skip
    if plot:
        from video_retrieval.moments.plot import plot_moments

        plot_moments(result, plot, ground_truth=ground_truth)
    return result


def window_iou(a, b) -> float:
    """IoU of two ``[start, end]`` windows in seconds (0 when disjoint or empty)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def top_hit(result: dict, ground_truth, threshold: float = 0.5) -> dict | None:
    """Does the top window hit the ground truth? ``{"iou", "window", "ground_truth", "hit"}``
    with the best IoU over the ground-truth windows; None without moments or ground truth."""
    gts = [tuple(map(float, w[:2])) for w in (ground_truth or [])]
    if not result.get("moments") or not gts:
        return None
    m = result["moments"][0]
    top = (float(m["start"]), float(m["end"]))
    ious = [window_iou(top, g) for g in gts]
    best = int(np.argmax(ious))
    return {"iou": ious[best], "window": list(top), "ground_truth": list(gts[best]),
            "hit": ious[best] >= threshold}  # fmt: skip
