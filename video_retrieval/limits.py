"""Bounds of the numeric options of indexing, search and localization, one table for the CLI,
``vr serve`` and the Python API, so that a value one of them accepts the others accept too.

Layer: the bottom of the package, beside ``errors`` and ``schemas``.

Each bound is inclusive; ``None`` means unbounded on that side. The upper bounds stop values that
would only waste hours before failing (a billion frames per video, a sampling rate of 1e-9 fps
that gives one frame a day), not values a large collection needs.
"""

from __future__ import annotations

from video_retrieval.errors import UserError

#: option -> (smallest, largest, what it counts)
BOUNDS: dict[str, tuple[float | None, float | None, str]] = {
    "k": (1, 1000, "results"),
    "candidates": (1, 100_000, "stage-1 candidates"),
    "alpha": (0.0, 1.0, "weight of the base score"),
    "batch_size": (1, 65_536, "frames per encoder batch"),
    "text_batch_size": (1, 65_536, "queries per text-tower batch"),
    "workers": (0, 256, "decoding processes"),
    "devices": (1, 1024, "processes"),
    "num_nodes": (1, 65_536, "nodes"),
    "shard_size": (1, 1_000_000, "videos per shard"),
    "num_frames": (1, 4096, "frames per video"),
    "fps": (0.001, 240.0, "frames per second"),
    "recall_sample": (1, 10_000_000, "sampled vectors"),
    "target_recall": (0.01, 1.0, "recall@10"),
    "top": (1, 100, "moments"),
    "nms_iou": (0.0, 1.0, "IoU"),
    "patches": (0, 1024, "patch tokens per frame"),
    "image_weight": (0.0, 1.0, "weight of the image in a text + image query"),
    "seconds": (0.0, 10_000_000.0, "seconds into the video"),
    "max_seconds": (0.1, 86_400.0, "seconds per exported clip"),
}


def flag(name: str) -> str:
    return "-k" if name == "k" else "--" + name.replace("_", "-")


def check(name: str, value, label: str | None = None):
    """``value`` if it lies within ``BOUNDS[name]``, else a one-line ``UserError`` naming the
    option (``label``, default its CLI flag) and the bounds. Integers stay integers."""
    lo, hi, what = BOUNDS[name]
    label = label or flag(name)
    integral = isinstance(lo, int) and isinstance(hi, int)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a number, got {value!r}") from None
    if number != number or (integral and number != int(number)):  # NaN, 2.5 frames
        kind = "a whole number" if integral else "a number"
        raise UserError(f"{label} must be {kind}, got {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise UserError(f"{label} must be in {lo}..{hi} ({what}), got {value}")
    return int(number) if integral else number


def check_query(query) -> str:
    """The stripped query sentence; an empty one is refused (before any model is loaded)."""
    if not isinstance(query, str) or not query.strip():
        raise UserError("the query is empty: give a sentence to search for")
    return query.strip()


#: the aggregators ``--rerank`` may name (``temporal.AGGREGATORS``; a test keeps the two equal),
#: known here so that a mistyped reranker is refused before torch is imported
AGGREGATOR_NAMES = (
    "mean",
    "query_scored",
    "seq_lstm",
    "seq_transformer",
    "tight_transformer",
    "ucofia",
)


def check_rerank(spec: str) -> str:
    """``--rerank``'s value: auto, none, cliprerank, an aggregator name or an existing file."""
    import os

    if spec in ("auto", "none", "cliprerank", *AGGREGATOR_NAMES) or os.path.exists(spec):
        return spec
    known = ", ".join(["auto", "none", "cliprerank", *AGGREGATOR_NAMES])
    raise UserError(f"unknown reranker {spec!r}: use one of {known}, or a checkpoint path")
