"""The picture of a localization: the per-clip curve over time (what it is, in words, on its
axis), the predicted moments and the ground truth as bands on one time axis, a legend outside the
data, and a thumbnail of each moment (``vr localize --plot``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from video_retrieval.media.atomic import atomic_path

#: what the per-clip curve is, in words and unit, for the y-axis of the plot
CURVE_LABELS = {
    "head": "saliency logit ({head} head)\nhigher = more relevant",
    "frames": "query-clip cosine\n(zero-shot, CLIP frames)",
    "pooled_clips": "query-clip cosine\n(zero-shot, pooled clips)",
    "index_frames": "query-clip cosine\n(zero-shot, index frames)",
}
SCORE_LABEL = "moment score (0-1)"


def curve_label(result: dict) -> str:
    """What the ``saliency`` curve of a localization result is, with its unit, for an axis."""
    if result.get("method") == "head":
        return CURVE_LABELS["head"].format(head=result.get("head") or "trained")
    return CURVE_LABELS.get(str(result.get("features")), "query-clip cosine (zero-shot)")


def plot_moments(result: dict, out_png, thumbnails: int | None = None, ground_truth=None) -> Path:
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


def _thumbnails(result: dict, moments: list[dict]) -> list[tuple[float, np.ndarray]]:
    out = []
    try:
        from video_retrieval.media.decode import load_frames

        for m in moments:
            t = 0.5 * (m["start"] + m["end"])
            fr = load_frames(result["video"], num_frames=1, start=max(0.0, t - 0.05),
                             end=t + 0.05, size=96)  # fmt: skip
            out.append((t, fr.pixels[0]))
    except Exception:  # thumbnails are a nicety; the curve and the moments are the content
        return []
    return out


def moment_figure(result: dict, thumbnails: int | None = None, ground_truth=None):
    """Figure of a localization result on one time axis: the per-clip curve (what it is and its
    unit on the left y-axis), each predicted moment as a bar at the height of its score on the
    right y-axis (``moment score (0-1)``, the scale the answers give; #1 highlighted), the
    ground truth (``[[start, end], ...]`` seconds) shaded, the legend below the axes, and a
    thumbnail of each moment (``thumbnails``: how many, default all)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    sal = np.asarray(result["saliency"], dtype=np.float64)
    clip_len = float(result.get("clip_len", 2.0))
    end = float(result.get("duration") or len(sal) * clip_len)
    edges = np.minimum(np.arange(len(sal) + 1) * clip_len, max(end, clip_len * (len(sal) - 1)))
    moments = list(result["moments"])
    gts = [tuple(map(float, w[:2])) for w in (ground_truth or [])]
    n_thumbs = len(moments) if thumbnails is None else min(len(moments), int(thumbnails))
    thumbs = _thumbnails(result, moments[:n_thumbs]) if n_thumbs else []
    heights = [3.2] + ([1.5] if thumbs else [])
    fig = plt.figure(figsize=(11, sum(heights) + 1.4), layout="constrained")
    grid = fig.add_gridspec(len(heights), max(1, len(thumbs)), height_ratios=heights)
    ax = fig.add_subplot(grid[0, :])
    gt_colour, top_colour, other_colour, curve_colour = (
        "tab:green",
        "tab:orange",
        "0.45",
        "tab:blue",
    )
    handles = []
    if len(sal):
        ax.step(edges, np.append(sal, sal[-1]), where="post", color=curve_colour, lw=1.5)
        handles.append(Line2D([], [], color=curve_colour, lw=1.5,
                              label=curve_label(result).replace("\n", ", ")))  # fmt: skip
    for s, e in gts:
        ax.axvspan(s, e, color=gt_colour, alpha=0.18, lw=0)
    if gts:
        handles.append(Patch(color=gt_colour, alpha=0.35, label="ground truth"))
    ax.set_xlim(0, max(end, 1e-6))
    ax.set_ylabel(curve_label(result), fontsize=9, color=curve_colour)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    sx = ax.twinx()  # the moments on their own scale: their scores
    sx.set_ylim(0, 1.12)
    sx.set_ylabel(SCORE_LABEL, fontsize=9)
    for i, m in enumerate(moments):
        colour = top_colour if i == 0 else other_colour
        sx.hlines(m["score"], m["start"], m["end"], colors=colour, lw=6 if i == 0 else 4,
                  alpha=0.9 if i == 0 else 0.7)  # fmt: skip
        sx.text(0.5 * (m["start"] + m["end"]), m["score"] + 0.03,
                f"#{i + 1} {m['score']:.2f}", ha="center", va="bottom", fontsize=8)  # fmt: skip
    if moments:
        handles.append(Line2D([], [], color=top_colour, lw=6, label="#1 moment (at its score)"))
    if len(moments) > 1:
        handles.append(Line2D([], [], color=other_colour, lw=4, label="other moments"))
    title = f'{Path(result["video"]).name}: "{result["query"]}"'
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)  # fmt: skip
    for j, (t, img) in enumerate(thumbs):
        tax = fig.add_subplot(grid[1, j])
        tax.imshow(img)
        tax.set_title(f"#{j + 1} @ {t:.1f}s", fontsize=8)
        tax.axis("off")
    return fig
