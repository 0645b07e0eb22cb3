"""The JSON shapes of search hits and localizations, one definition for ``vr search --json`` /
``vr localize --json``, the HTTP API (``vr serve``; its OpenAPI schema at ``/docs``) and the Python
API (``Hit.to_dict()``, ``localize()``).

Scales, said once:

* a hit's ``score`` is the reranker's score (``score_kind`` of the answer: a ``cosine`` in
  [-1, 1] for no reranking, CLIPRerank and query scoring; a ``logit`` for a trained cross-encoder);
  ``base_score`` is always the stage-1 cosine of the query and the video's pooled vector;
* a moment's ``score`` is in [0, 1]: a trained head's foreground probability, or for the
  zero-shot baseline ``sigmoid(contrast)`` where ``contrast`` is the window's mean z-scored clip
  similarity minus the rest of the video's (0.5: no different from the rest);
* ``saliency`` is one value per ``clip_len`` seconds in ``saliency_unit``: a head's saliency
  ``logit``, or the zero-shot clip-query ``cosine``.

Layer: the bottom of the package (pydantic only), imported by ``index``, ``moments``, ``cli`` and
``web``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Span(BaseModel):
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")


class Moment(Span):
    score: float = Field(ge=0.0, le=1.0, description="in [0, 1] (see the scales above)")


class Hit(BaseModel):
    model_config = ConfigDict(extra="allow")  # the HTTP API adds its URLs

    rank: int = Field(description="1 = best")
    id: int = Field(description="the video's row in the index version searched")
    video: str = Field(description="path of the indexed file")
    score: float = Field(description="the reranker's score (score_kind)")
    base_score: float = Field(description="stage-1 cosine of the query and the pooled video")
    moment: Span = Field(description="the best-matching stretch of the video")
    thumbnail_time: float = Field(description="seconds: the best-matching frame")
    duration: float | None = Field(None, description="seconds: the whole video")
    matched_frame_time: float | None = Field(
        None,
        description="seconds: for an image query, the stored frame most like the image; for a "
        "clip query, the stored frame the clip's first frame was aligned with (null for text)",
    )

    def to_dict(self) -> dict:
        """The hit as ``vr search --json`` prints it."""
        return self.model_dump()


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    query: str = Field(description="the text searched for (for a query by example: what it was)")
    query_kind: str = Field(
        "text",
        description="text, image, text+image, video (a clip of a file) or like (an "
        "indexed video: more like this)",
    )
    example: dict | None = Field(
        None, description="a query by example: its images, video and range, or index id"
    )
    rerank: str = Field(description="the reranker used (auto resolved)")
    score_kind: str = Field(description="cosine or logit: the scale of the hits' score")
    generation: int | None = Field(None, description="version of the index searched")
    results: list[Hit]


class Localization(BaseModel):
    model_config = ConfigDict(extra="allow")

    video: str
    query: str
    duration: float = Field(description="seconds")
    clip_len: float = Field(description="seconds per saliency value")
    method: str = Field(description="head (a trained moment head) or zero_shot")
    head: str | None = Field(None, description="the head: QD-DETR or Moment-DETR")
    features: str | None = Field(
        None,
        description="zero-shot clip features: frames (CLIP frames), pooled_clips (a clip "
        "encoder's pooled clips) or index_frames (the frames an index stored)",
    )
    windows: int = Field(1, description="windows of its trained length the head slid over")
    nms_iou: float | None = Field(
        None, description="moments overlapping a better one by more IoU were dropped"
    )
    moments: list[Moment] = Field(description="best first")
    saliency: list[float] = Field(description="one value per clip_len seconds")
    saliency_unit: str = Field(description="logit (a head's saliency) or cosine (zero-shot)")
    weights: dict = Field(default_factory=dict, description="where the model weights came from")
