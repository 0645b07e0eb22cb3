"""Query one video: where does the sentence happen?

``localize(video, query)`` returns ``{"video", "query", "moments": [{"start", "end", "score"}],
"saliency": [...]}``. With a moment checkpoint (``checkpoint=``) the trained moment head
(``moment_predictor.MomentPredictor``) predicts the windows; without one, the zero-shot baseline
scores each 2-s clip by the cosine between its CLIP embedding and the query and ranks candidate
windows with ``moment_zeroshot.zero_shot_windows``; with ``clip_encoder=`` (a ``vr train``
retrieval checkpoint such as ``configs/moments_synth_clips.yaml`` writes) each clip is instead its
aggregator's embedding of the clip's frames +-1 s (``moment_features.load_clip_encoder``), scored
against the checkpoint's own text tower. ``saliency`` is the per-clip score curve
(one value per ``clip_len`` seconds). ``plot=`` writes a PNG of that curve with the moments
shaded and a few thumbnails.

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

from video_retrieval.errors import UserError


def _check(video, query) -> tuple[str, str]:
    if not isinstance(query, str) or not query.strip():
        raise UserError("the query is empty: give a sentence to localize")
    p = Path(video).expanduser()
    if not p.is_file():
        raise UserError(f"no such video file: {video}")
    return str(p.resolve()), query.strip()


def _moments(rows) -> list[dict]:
    out = []
    for r in rows:
        s, e, sc = (float(x) for x in r[:3])
        out.append({"start": round(s, 3), "end": round(e, 3), "score": round(sc, 6)})
    return out


def localize(
    video,
    query: str,
    checkpoint=None,
    top: int = 5,
    model: str = "vr-tiny",
    pretrained: str | None = None,
    encoder=None,
    clip_len: float = 2.0,
    plot=None,
    clip_encoder=None,
) -> dict:
    """Top-``top`` moments of ``query`` in ``video`` (seconds), best first; see module doc."""
    path, query = _check(video, query)
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise UserError(f"no such checkpoint: {checkpoint}")
        try:
            from video_retrieval.moment_predictor import MomentPredictor
        except ModuleNotFoundError as exc:
            raise UserError("localizing with a moment checkpoint is not yet available") from exc
        pred = MomentPredictor.from_checkpoint(checkpoint).predict(path, query, top=top)
        saliency = [float(x) for x in pred.get("saliency", [])]
        result = {
            "video": path,
            "query": query,
            "moments": _moments(pred["moments"]),
            "saliency": [round(x, 6) for x in saliency],
            "clip_len": float(pred.get("clip_len", clip_len)),
            "method": "moment_detr",
        }
    else:
        from video_retrieval.moment_features import clip_features
        from video_retrieval.moment_zeroshot import zero_shot_query

        pool, pool_kw = None, {}
        if clip_encoder is not None:
            from video_retrieval.moment_features import load_clip_encoder

            encoder, pool, pool_kw = load_clip_encoder(clip_encoder)
        elif encoder is None:
            from video_retrieval.encoders import create_encoder

            encoder = create_encoder(model, pretrained=pretrained)
        encoder.eval()
        feats, _times, duration = clip_features(
            encoder, path, clip_len=clip_len, aggregator=pool, **pool_kw
        )
        rows, sims = zero_shot_query(encoder, feats, duration, query, clip_len, top)
        result = {
            "video": path,
            "query": query,
            "moments": _moments(rows),
            "saliency": [round(float(x), 6) for x in sims],
            "clip_len": float(clip_len),
            "duration": round(float(duration), 3),
            "method": "zero_shot" if pool is None else "zero_shot_pooled",
        }
    if plot:
        plot_moments(result, plot)
    return result


def plot_moments(result: dict, out_png, thumbnails: int = 4) -> Path:
    """PNG: query similarity over time, moments shaded, thumbnails of the top moments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sal = np.asarray(result["saliency"], dtype=np.float64)
    clip_len = float(result.get("clip_len", 2.0))
    end = float(result.get("duration") or len(sal) * clip_len)
    edges = np.minimum(np.arange(len(sal) + 1) * clip_len, max(end, clip_len * (len(sal) - 1)))
    moments = result["moments"][:thumbnails]
    thumbs = []
    if moments:
        try:
            from video_retrieval.decode import load_frames

            times = [0.5 * (m["start"] + m["end"]) for m in moments]
            for t in times:
                fr = load_frames(
                    result["video"], num_frames=1, start=max(0.0, t - 0.05), end=t + 0.05, size=96
                )
                thumbs.append((t, fr.pixels[0]))
        except Exception:  # thumbnails are a nicety; the curve is the content
            thumbs = []
    fig = plt.figure(figsize=(10, 5 if thumbs else 3.2))
    rows = 2 if thumbs else 1
    ax = fig.add_subplot(rows, 1, 1)
    if len(sal):
        ax.step(edges, np.append(sal, sal[-1]), where="post", color="tab:blue", lw=1.5)
    for i, m in enumerate(result["moments"]):
        ax.axvspan(m["start"], m["end"], color="tab:orange", alpha=0.35 if i == 0 else 0.15, lw=0)
        ax.text(m["start"], ax.get_ylim()[1], f"#{i + 1}", va="top", fontsize=8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("similarity")
    ax.set_title(f'{Path(result["video"]).name}: "{result["query"]}"', fontsize=10)
    for j, (t, img) in enumerate(thumbs):
        tax = fig.add_subplot(2, len(thumbs), len(thumbs) + j + 1)
        tax.imshow(img)
        tax.set_title(f"#{j + 1} @ {t:.1f}s", fontsize=8)
        tax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
