"""Queries by example: encoding an image, a clip of a video, or an indexed video into the
vectors search compares (``ExampleQuery``); ranking them is ``example_search``.

* **image** (``vr search --image A.png [--image B.jpg]``): each image is read with Pillow
  (``media.image``), preprocessed and encoded by the index's own image tower exactly as an
  indexed frame is (short side to the encoder's size, centre crop, its normalisation), and
  L2-normalised; several images are averaged as a query set (the mean of the normalised
  embeddings, normalised). Stage 1 compares this with the pooled video vectors; the moment and the
  default rerank come from the stored frames (``example_search``; BENCHMARKS.md "Search by example"
  measured which stage works best).
* **text + image** (``"QUERY" --image A.png --image-weight W``): stage 1 compares
  ``normalise((1 - W) * t + W * i)`` of the normalised text embedding ``t`` (as a text search
  embeds it) and image embedding ``i`` with the pooled vectors: W = 0 is the text search, W = 1
  the image search, 0.5 (default) weighs both alike; CLIP puts both in one space, so the sum asks
  for videos close to both. Stage 2 (``frames``) weighs each part where it was trained to match:
  ``(1 - W) * cos(t, pooled video) + W * max over frames cos(i, frame)``.
* **video clip** (``--video PATH [--start S --end E]``): the clip's frames sampled as the index
  samples (its fps or frame count, over the clip) and encoded as indexing encodes them. Stage 1
  compares the mean of their normalised embeddings with the pooled vectors (``CLIP_STAGE1``):
  pooling the clip with the index's own aggregator, as indexing pools a video, was measured
  too and found far fewer sources (a 2 s clip pooled by seqTransf is not like the 4 s video it
  comes from: R@1 50.0 against 80.5 after alignment, BENCHMARKS.md "Search by example");
  stage 2 aligns the clip's frames with the candidates' stored frames.
* **more like this** (``--like ID[:S-E]``): an indexed video's stored vectors (nothing is
  decoded): for the whole video its stored pooled vector against the others (video against
  video, as indexing pooled them); for ``S``-``E`` seconds of it, its stored frames in that
  range as a clip (above). The query video is left out of its own results unless
  ``include_self``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.index.build import pool_videos
from video_retrieval.index.queries import encode_query
from video_retrieval.index.rerank import l2n
from video_retrieval.index.store import IndexStore
from video_retrieval.limits import check

#: ``ExampleQuery.kind`` values; the answer's ``query_kind`` (text queries are "text")
KINDS = ("image", "text+image", "video", "like")
#: what an image is compared with the pooled vectors as (BENCHMARKS.md "Search by example"):
#: "frame", its image-tower embedding; "pooled", the image pooled as a one-frame video
IMAGE_STAGE1 = "frame"
#: the same for a clip of a file: "pooled", its frames pooled by the index's aggregator (what
#: indexing does); "frame", the mean of its frames' image-tower embeddings
CLIP_STAGE1 = "frame"


@dataclass
class ExampleQuery:
    """One encoded query by example."""

    kind: str  # one of KINDS
    embedding: np.ndarray  # [D] L2-normalised: stage 1, against the pooled vectors
    frames: np.ndarray  # [M, D] L2-normalised query frames (an image: M = 1); the moment
    times: np.ndarray | None = None  # [M] seconds from the clip's start (clips only)
    span: float = 0.0  # seconds the clip lasts (clips only)
    label: str = ""  # the answer's "query": what was searched for, in words
    example: dict = field(default_factory=dict)  # the answer's "example"
    exclude: int | None = None  # the index row of the query video (left out of its results)
    text: np.ndarray | None = None  # [D] text + image: the text's embedding (stage 2 fuses)
    image_weight: float = 1.0  # text + image: the image's weight W

    @property
    def is_clip(self) -> bool:
        return self.kind in ("video", "like")


def image_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (str, Path, bytes, bytearray)) or isinstance(images, np.ndarray):
        return [images]
    if hasattr(images, "size") and hasattr(images, "mode"):  # one PIL image
        return [images]
    return list(images)


@torch.no_grad()
def encode_images(encoder, images: list[np.ndarray]) -> np.ndarray:
    """L2-normalised image-tower embeddings [N, D] of uint8 RGB images (one at a time: sizes
    differ; each is preprocessed as an indexed frame is)."""
    out = [encoder.encode_frames(img[None])[0].float()[0].cpu().numpy() for img in images]
    return l2n(np.stack(out)).astype(np.float32)


def image_name(source, i: int) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else f"image {i + 1}"


def image_query(index: IndexStore, encoder, aggregator, images, text: str | None = None,
                image_weight: float = 0.5, names: list[str] | None = None,
                space: str = IMAGE_STAGE1) -> ExampleQuery:  # fmt: skip
    """An image (or text + image) query: see the module doc. ``images``: paths, file bytes,
    PIL images or uint8 [H,W,3] arrays; ``names`` label them in the answer."""
    from video_retrieval.media.image import read_image

    items = image_list(images)
    if not items:
        raise UserError("no image given")
    names = list(names) if names else [image_name(x, i) for i, x in enumerate(items)]
    pixels = [read_image(x, what=n if not isinstance(x, (str, Path)) else None)
              for x, n in zip(items, names)]  # fmt: skip
    each = encode_images(encoder, pixels)
    emb = l2n(each.mean(0))
    stage1 = emb
    if space == "pooled":
        stage1 = l2n(np.mean([pool_frames(aggregator, f[None]) for f in each], axis=0))
    example = {"images": names}
    label = "image " + ", ".join(names)
    kind = "image"
    t, w = None, 1.0
    if text is not None:
        w = check("image_weight", image_weight)
        t = encode_query(encoder, aggregator, text).embedding
        stage1 = l2n((1.0 - w) * t + w * stage1)
        example["text"], example["image_weight"] = text, w
        label, kind = f"{text} + {label}", "text+image"
    return ExampleQuery(kind, stage1.astype(np.float32), emb[None].astype(np.float32),
                        label=label, example=example, text=t, image_weight=w)  # fmt: skip


def pool_frames(aggregator, frames: np.ndarray) -> np.ndarray:
    """The pooled, L2-normalised vector [D] of frame embeddings [M, D], as indexing pools."""
    return pool_videos(aggregator, [np.asarray(frames, np.float32)])[0]


def _clip_times(ts, start: float) -> np.ndarray:
    return np.asarray(ts, dtype=np.float64) - float(start)


@torch.no_grad()
def video_query(index: IndexStore, encoder, aggregator, path, start: float | None = None,
                end: float | None = None, label: str | None = None,
                space: str | None = None) -> ExampleQuery:  # fmt: skip
    """A clip query: ``start``-``end`` seconds of the video file ``path`` (all of it by
    default), sampled as the index samples, encoded and pooled (module doc)."""
    from video_retrieval.media.decode import load_frames, probe_video

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--video: no such file: {path}")
    info = probe_video(p)
    s = 0.0 if start is None else float(start)
    e = info.duration if end is None else float(end)
    _check_span(s, e, info.duration, str(label or p))
    e = min(e, info.duration)
    sampling = index.fingerprint.get("sampling") or {}
    fr = load_frames(p, num_frames=sampling.get("num_frames"), fps=sampling.get("fps"),
                     start=s, end=e, size=getattr(encoder, "image_size", None))  # fmt: skip
    mask = np.asarray(fr.mask, dtype=bool)
    pixels = np.ascontiguousarray(np.asarray(fr.pixels)[mask])
    frames = l2n(encoder.encode_frames(pixels)[0].float().cpu().numpy())
    times = _clip_times(np.asarray(fr.timestamps)[mask], s)
    name = label or p.name
    space = space or CLIP_STAGE1
    stage1 = pool_frames(aggregator, frames) if space == "pooled" else l2n(frames.mean(0))
    return ExampleQuery(
        "video", stage1, frames, times, e - s,
        label=f"video {name} {s:g}-{e:g} s", example={"video": str(label or p.resolve()),
                                                      "start": s, "end": e},
        exclude=None if label else index.row_of(p),
    )  # fmt: skip


#: an end past the video's by less than this (a frame, rounding) is the video's end
SPAN_SLACK_S = 0.1
LIKE = re.compile(r"^\s*(\d+)\s*(?::\s*([0-9.eE+]+)\s*-\s*([0-9.eE+]+)\s*)?$")


def parse_like(spec) -> tuple[int, float | None, float | None]:
    """``"ID"`` or ``"ID:S-E"`` (seconds) -> (row, start, end); a one-line error otherwise."""
    if isinstance(spec, (int, np.integer)):
        return int(spec), None, None
    m = LIKE.match(str(spec))
    if not m:
        raise UserError(f"--like {spec!r}: give an index id, e.g. 3, or an id and a range, 3:2-4.5")
    row = int(m.group(1))
    if m.group(2) is None:
        return row, None, None
    try:
        return row, float(m.group(2)), float(m.group(3))
    except ValueError:
        raise UserError(f"--like {spec!r}: the range must be seconds, e.g. 3:2-4.5") from None


def _check_span(s: float, e: float, duration: float, what: str) -> None:
    bad = s < 0 or e <= s or s >= duration or e > duration + SPAN_SLACK_S
    if not (math.isfinite(s) and math.isfinite(e)) or bad:
        raise UserError(
            f"the range {s:g}-{e:g} s is outside {what} (0-{duration:g} s): give 0 <= start < end"
        )


def like_query(index: IndexStore, aggregator, spec, start: float | None = None,
               end: float | None = None) -> ExampleQuery:  # fmt: skip
    """ "More like this" for an indexed video (``spec``: its id, or ``"ID:S-E"``), from its
    stored vectors; ``start``/``end`` override the range of ``spec``."""
    row, s, e = parse_like(spec)
    s = start if start is not None else s
    e = end if end is not None else e
    if not 0 <= row < len(index):
        n = len(index)
        raise UserError(f"--like {row}: no such video in the index (ids are 0..{n - 1})"
                        if n else f"--like {row}: the index is empty")  # fmt: skip
    entry = index.videos[row]
    frames, ts = index.frames(row)
    duration = float(entry.get("duration") or (ts[-1] if len(ts) else 0.0))
    name = Path(entry["path"]).name
    if s is None and e is None:
        pooled = l2n(np.asarray(index.pooled[row], np.float32))
        return ExampleQuery("like", pooled, l2n(frames), _clip_times(ts, 0.0), duration,
                            label=f"like {row} ({name})",
                            example={"like": row, "video": entry["path"]}, exclude=row)  # fmt: skip
    s = 0.0 if s is None else float(s)
    e = duration if e is None else float(e)
    _check_span(s, e, duration, f"video {row} ({name})")
    e = min(e, duration)
    inside = (ts >= s - 1e-6) & (ts < e)
    if not inside.any():  # a range between two stored frames: the frame shown at its middle
        inside = np.zeros(len(ts), bool)
        inside[int(np.argmin(np.abs(ts - (s + e) / 2)))] = True
    clip = l2n(frames[inside])
    stage1 = (
        pool_frames(aggregator, frames[inside]) if CLIP_STAGE1 == "pooled" else l2n(clip.mean(0))
    )
    return ExampleQuery(
        "like", stage1, clip, _clip_times(ts[inside], s), e - s,
        label=f"like {row} ({name}) {s:g}-{e:g} s",
        example={"like": row, "video": entry["path"], "start": s, "end": e}, exclude=row,
    )  # fmt: skip
