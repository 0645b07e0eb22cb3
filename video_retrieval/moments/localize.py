"""Query one video: where does the sentence happen?

``localize(video, query)`` returns ``{"video", "query", "moments": [{"start", "end", "score"}],
"saliency": [...], "clip_len", "duration", "method", "weights"}`` (and ``"head"``:
``moment_detr`` / ``qd_detr`` when ``method`` is ``moment_detr``, a trained DETR head). With a
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
    {'start': 12.0, 'end': 18.0, 'score': 1.73}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from video_retrieval.atomic import atomic_path
from video_retrieval.errors import UserError


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


def _moments(rows) -> list[dict]:
    out = []
    for r in rows:
        s, e, sc = (float(x) for x in r[:3])
        out.append({"start": round(s, 3), "end": round(e, 3), "score": round(sc, 6)})
    return out


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
        self.method = "zero_shot" if pool is None else "zero_shot_pooled"
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

    def predict(self, path, query: str, top: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
        """(windows [K,3] seconds + score, per-clip similarities [N], duration)."""
        from video_retrieval.moments.zero_shot import zero_shot_query

        feats, _, duration = self.encode_video(path)
        rows, sims = zero_shot_query(self.encoder, feats, duration, query, self.clip_len, top)
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
) -> dict:
    """Top-``top`` moments of ``query`` in ``video`` (seconds), best first; see module doc.

    The model: ``checkpoint`` (a trained moment head, or an already loaded ``predictor``),
    ``clip_encoder`` (a retrieval checkpoint pooling clips), ``encoder`` (a loaded CLIP), or
    ``model``/``pretrained`` resolved as ``vr index`` does (default ``ViT-B-32`` /
    ``laion2b_s34b_b79k``; ``random_weights=True`` only for tests). ``ground_truth``
    (``[[start, end], ...]`` seconds, when known) is drawn as its own band in the ``plot``.
    """
    path, query = _check(video, query)
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    if checkpoint is not None or predictor is not None:
        if predictor is None:
            if not os.path.exists(checkpoint):
                raise UserError(f"no such checkpoint: {checkpoint}")
            from video_retrieval.moments.predictor import MomentPredictor

            predictor = MomentPredictor.from_checkpoint(checkpoint)
        check_whole_video(path)
        pred = predictor.predict(path, query, top=top)
        result = {
            "video": path,
            "query": query,
            "moments": _moments(pred["moments"]),
            "saliency": [round(float(x), 6) for x in pred["saliency"]],
            "clip_len": float(pred["clip_len"]),
            "duration": round(float(pred["duration"]), 3),
            "method": "moment_detr",
            "head": str(predictor.meta.get("head", "moment_detr")),
            "windows": int(pred.get("windows", 1)),
            "weights": {"kind": "moment_checkpoint", "path": str(checkpoint or "")},
        }
    else:
        zs = ZeroShotLocalizer.build(
            model, pretrained, clip_encoder, encoder, random_weights, clip_len=clip_len
        )
        check_whole_video(path)
        rows, sims, duration = zs.predict(path, query, top)
        result = {
            "video": path,
            "query": query,
            "moments": _moments(rows),
            "saliency": [round(float(x), 6) for x in sims],
            "clip_len": float(clip_len),
            "duration": round(float(duration), 3),
            "method": zs.method,
            "weights": zs.weights,
        }
    if plot:
        plot_moments(result, plot, ground_truth=ground_truth)
    return result


#: y-axis words for each localization method (what the plotted per-clip curve is)
CURVE_LABELS = {
    "moment_detr": "saliency (trained head)",
    "zero_shot": "query-clip cosine\nsimilarity (zero-shot)",
    "zero_shot_pooled": "query-clip cosine similarity\n(zero-shot, pooled clips)",
}
HEAD_NAMES = {"moment_detr": "Moment-DETR", "qd_detr": "QD-DETR"}


def curve_label(result: dict) -> str:
    """What the ``saliency`` curve of a localization result is, in words, for an axis label."""
    method = str(result.get("method", ""))
    if method == "moment_detr":
        head = HEAD_NAMES.get(str(result.get("head", "moment_detr")), str(result.get("head")))
        return f"saliency\n({head} head)"
    return CURVE_LABELS.get(method, "score")


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


def plot_moments(result: dict, out_png, thumbnails: int = 4, ground_truth=None) -> Path:
    """Write ``moment_figure`` as a PNG (atomically: temp file, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = moment_figure(result, thumbnails, ground_truth)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return out


def moment_figure(result: dict, thumbnails: int = 4, ground_truth=None):
    """Figure of a localization result: the per-clip curve (head saliency or zero-shot similarity,
    named on the y-axis), then one lane per window below it (the ground truth when given,
    ``ground_truth`` = ``[[start, end], ...]`` seconds, then each predicted moment with its rank
    and score as the lane's label, so no two labels share a line), a legend, and thumbnails of
    the top moments. The top prediction and the ground truth are also shaded on the curve."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sal = np.asarray(result["saliency"], dtype=np.float64)
    clip_len = float(result.get("clip_len", 2.0))
    end = float(result.get("duration") or len(sal) * clip_len)
    edges = np.minimum(np.arange(len(sal) + 1) * clip_len, max(end, clip_len * (len(sal) - 1)))
    moments = list(result["moments"])
    gts = [tuple(map(float, w[:2])) for w in (ground_truth or [])]
    thumbs = []
    if moments and thumbnails:
        try:
            from video_retrieval.media.decode import load_frames

            times = [0.5 * (m["start"] + m["end"]) for m in moments[:thumbnails]]
            for t in times:
                fr = load_frames(
                    result["video"], num_frames=1, start=max(0.0, t - 0.05), end=t + 0.05, size=96
                )
                thumbs.append((t, fr.pixels[0]))
        except Exception:  # thumbnails are a nicety; the curve is the content
            thumbs = []
    lanes = (["ground truth"] if gts else []) + [
        f"#{i + 1}  score {m['score']:.2f}" for i, m in enumerate(moments)
    ]
    lane_h = 0.28
    heights = [2.4, max(0.6, lane_h * len(lanes))] + ([1.5] if thumbs else [])
    # constrained layout keeps the title, axis labels, lane labels, legend and thumbnail titles
    # from overlapping one another
    fig = plt.figure(figsize=(11, sum(heights) + 1.3), layout="constrained")
    grid = fig.add_gridspec(len(heights), max(1, len(thumbs)), height_ratios=heights)
    ax = fig.add_subplot(grid[0, :])
    gt_colour, top_colour, other_colour = "tab:green", "tab:orange", "tab:gray"
    handles = []
    if len(sal):
        (line,) = ax.step(edges, np.append(sal, sal[-1]), where="post", color="tab:blue", lw=1.5)
        line.set_label(curve_label(result).replace("\n", " "))
        handles.append(line)
    for s, e in gts:
        ax.axvspan(s, e, color=gt_colour, alpha=0.18, lw=0)
    if gts:
        handles.append(Patch(color=gt_colour, alpha=0.35, label="ground truth"))
    if moments:
        m0 = moments[0]
        ax.axvspan(m0["start"], m0["end"], facecolor="none", edgecolor=top_colour, lw=2,
                   hatch="//", alpha=0.9)  # fmt: skip
        handles.append(Patch(facecolor="none", edgecolor=top_colour, hatch="//",
                             label="top prediction (#1)"))  # fmt: skip
    if len(moments) > 1:
        handles.append(Patch(color=other_colour, alpha=0.5, label="other predictions (lanes)"))
    ax.set_xlim(0, max(end, 1e-6))
    ax.set_ylabel(curve_label(result), fontsize=9)
    ax.tick_params(labelbottom=False)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)  # fmt: skip
    title = f'{Path(result["video"]).name}: "{result["query"]}"'
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=10)

    lax = fig.add_subplot(grid[1, :], sharex=ax)
    for row in range(len(lanes)):
        y = len(lanes) - 1 - row  # first lane on top
        if gts and row == 0:
            for s, e in gts:
                lax.barh(y, e - s, left=s, height=0.7, color=gt_colour, alpha=0.7)
            continue
        m = moments[row - (1 if gts else 0)]
        first = m is moments[0]
        lax.barh(y, m["end"] - m["start"], left=m["start"], height=0.7,
                 color=top_colour if first else other_colour, alpha=0.85 if first else 0.5)  # fmt: skip
    lax.set_yticks(range(len(lanes)), list(reversed(lanes)), fontsize=8)
    lax.set_ylim(-0.6, len(lanes) - 0.4)
    lax.set_xlabel("time (s)")
    lax.grid(axis="x", alpha=0.3)
    for j, (t, img) in enumerate(thumbs):
        tax = fig.add_subplot(grid[2, j])
        tax.imshow(img)
        tax.set_title(f"#{j + 1} @ {t:.1f}s", fontsize=8)
        tax.axis("off")
    return fig
