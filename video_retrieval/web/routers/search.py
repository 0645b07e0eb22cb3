"""``GET /api/search`` (one query, or ``like=ID``: more like this) and ``POST /api/search`` (a
batch as JSON, or a query by example uploaded as ``multipart/form-data``: ``web.uploads``)."""

from __future__ import annotations

import tempfile
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from video_retrieval.errors import UserError, VideoDecodeError
from video_retrieval.limits import check
from video_retrieval.web.config import MAX_IMAGES, MAX_K, MAX_QUERY_CHARS
from video_retrieval.web.deps import StateDep
from video_retrieval.web.schemas import (
    ERRORS,
    GENERATION_DOC,
    QUERY_DOC,
    BatchSearchRequest,
    SearchResponse,
)
from video_retrieval.web.uploads import parse_upload

router = APIRouter(prefix="/api", tags=["search"])


def with_urls(result: dict) -> dict:
    """Add the thumbnail and media URLs of each hit (relative to the server), with the index
    version searched (``g=``), so that they fail (409) rather than show another video once the
    index has been updated."""
    g = result.get("generation")
    tail = "" if g is None else f"g={g}"
    for hit in result["results"]:
        hit["thumbnail"] = f"/thumb/{hit['id']}?t={hit['thumbnail_time']}" + (tail and "&" + tail)
        hit["media"] = f"/media/{hit['id']}" + (tail and "?" + tail)
    return result


LIKE_DOC = "more like this: an index id (from a search); its stored vectors are the query"


@router.get("/search", response_model=SearchResponse, responses=ERRORS)
def search(
    state: StateDep,
    q: Annotated[str | None, Query(description=QUERY_DOC, max_length=MAX_QUERY_CHARS)] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="results to return")] = 10,
    rerank: Annotated[str | None, Query(description="one of /api/info's rerankers")] = None,
    like: Annotated[int | None, Query(ge=0, description=LIKE_DOC)] = None,
    start: Annotated[float | None, Query(ge=0, description="like: start of its range (s)")] = None,
    end: Annotated[float | None, Query(gt=0, description="like: end of its range (s)")] = None,
    include_self: Annotated[bool, Query(description="like: keep the video itself")] = False,
    g: Annotated[int | None, Query(description=GENERATION_DOC)] = None,
) -> dict:
    """Rank the indexed videos for ``q``: ANN over pooled vectors, then the reranker. With
    ``like`` instead: the videos most like indexed video ``like`` (or its ``start``-``end``
    seconds), itself left out unless ``include_self`` (rerank auto, none, frames, cliprerank)."""
    if like is None:
        if q is None:
            raise RequestValidationError(
                [{"loc": ("query", "q"), "msg": "Field required", "type": "missing"}]
            )
        if start is not None or end is not None or include_self:
            raise UserError("start, end and include_self go with like=ID (more like this)")
        return with_urls(state.run_search(q, k=k, rerank=rerank))
    if q is not None:
        raise UserError("give q (a sentence) or like (an index id), not both")
    state.check_generation(g)
    state.video(like)  # 404 for an unknown id
    return with_urls(state.run_example(k=k, rerank=rerank, include_self=include_self, like=like,
                                       start=start, end=end))  # fmt: skip


UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": BatchSearchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": f"1..{MAX_IMAGES} images (a query set)"},
                        "video": {"type": "string", "format": "binary",
                                  "description": "a video clip (instead of images)"},
                        "q": {"type": "string", "description": "text + image: the sentence"},
                        "image_weight": {"type": "number", "minimum": 0, "maximum": 1,
                                         "default": 0.5},
                        "start": {"type": "number", "description": "video: start (s)"},
                        "end": {"type": "number", "description": "video: end (s)"},
                        "k": {"type": "integer", "default": 10},
                        "rerank": {"type": "string", "description": "auto, none, frames, "
                                   "cliprerank"},
                        "include_self": {"type": "boolean", "default": False},
                    },
                }
            },
        },
        "required": True,
    }
}  # fmt: skip


@router.post("/search", responses={**ERRORS, 413: {"description": "upload too large"}},
             openapi_extra=UPLOAD_DOC)  # fmt: skip
async def search_post(state: StateDep, request: Request):
    """A JSON body ``{"queries": [...], "k", "rerank"}``: several queries, answered in order
    (``BatchSearchResponse``). A ``multipart/form-data`` body: a query by example, uploaded
    (one or more ``image`` files, with ``q`` for text + image; or a ``video`` clip with
    ``start``/``end``): a ``SearchResponse`` (at most ``MAX_UPLOAD_BYTES`` in all)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        up = await parse_upload(request)
        return await run_in_threadpool(_search_upload, state, up)
    raw = await request.body()
    try:
        body = BatchSearchRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return await run_in_threadpool(_search_batch, state, body)


def _search_batch(state, body: BatchSearchRequest) -> dict:
    t0 = time.perf_counter()
    searches = [with_urls(state.run_search(q, k=body.k, rerank=body.rerank)) for q in body.queries]
    return {"took_ms": round((time.perf_counter() - t0) * 1e3, 3), "searches": searches}


def _search_upload(state, up) -> dict:
    if not 1 <= up.k <= MAX_K:
        raise UserError(f"k must be in 1..{MAX_K}, got {up.k}")
    common = {"k": up.k, "rerank": up.rerank, "include_self": up.include_self}
    if up.images:
        check("image_weight", up.image_weight, label="image_weight")
        if up.start is not None or up.end is not None:
            raise UserError("start and end are seconds of a video clip, not of an image")
        return with_urls(state.run_example(**common, images=up.images, names=up.names,
                                           text=up.q, image_weight=up.image_weight))  # fmt: skip
    folder = state.config.cache_root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", suffix=".video") as f:
        f.write(up.video)
        f.flush()
        try:
            return with_urls(state.run_example(**common, video=f.name, video_label=up.video_name,
                                               start=up.start, end=up.end))  # fmt: skip
        except VideoDecodeError as exc:  # the client's file: a 400 that names it, not our path
            why = exc.reason.replace(f.name, up.video_name).replace(f"'{up.video_name}'", "")
            raise UserError(f"{up.video_name}: {' '.join(why.split())}") from None
