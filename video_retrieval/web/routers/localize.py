"""``GET /api/localize``: where a query happens inside one indexed video."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from video_retrieval.moments.localize import DEFAULT_NMS_IOU
from video_retrieval.web.config import MAX_QUERY_CHARS, MAX_TOP
from video_retrieval.web.deps import StateDep
from video_retrieval.web.schemas import ERRORS, GENERATION_DOC, LocalizeResponse

router = APIRouter(prefix="/api", tags=["localize"])


@router.get("/localize", response_model=LocalizeResponse, responses=ERRORS)
def localize(
    state: StateDep,
    id: Annotated[str, Query(description="index id of the video (from /api/search)")],
    q: Annotated[str, Query(description="the sentence to localize", max_length=MAX_QUERY_CHARS)],
    top: Annotated[int, Query(ge=1, le=MAX_TOP, description="moments to return")] = 5,
    nms: Annotated[
        float,
        Query(
            ge=0.0,
            le=1.0,
            description="a moment overlapping a better one by more than this "
            "IoU is not returned (1: keep every moment)",
        ),
    ] = DEFAULT_NMS_IOU,
    g: Annotated[int | None, Query(description=GENERATION_DOC)] = None,
) -> dict:
    """Moments (start, end, score) and the per-clip saliency curve of ``q`` in video ``id``:
    the trained moment head when the server has one, else zero-shot over the index's frames."""
    state.check_generation(g)
    return state.localize.localize(id, q, top=top, nms_iou=nms)
