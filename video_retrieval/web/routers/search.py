"""``GET /api/search`` (one query) and ``POST /api/search`` (a batch)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from video_retrieval.web.config import MAX_K, MAX_QUERY_CHARS
from video_retrieval.web.deps import StateDep
from video_retrieval.web.schemas import (
    ERRORS,
    QUERY_DOC,
    BatchSearchRequest,
    BatchSearchResponse,
    SearchResponse,
)

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


@router.get("/search", response_model=SearchResponse, responses=ERRORS)
def search(
    state: StateDep,
    q: Annotated[str, Query(description=QUERY_DOC, max_length=MAX_QUERY_CHARS)],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="results to return")] = 10,
    rerank: Annotated[str | None, Query(description="one of /api/info's rerankers")] = None,
) -> dict:
    """Rank the indexed videos for ``q``: ANN over pooled vectors, then the reranker."""
    return with_urls(state.run_search(q, k=k, rerank=rerank))


@router.post("/search", response_model=BatchSearchResponse, responses=ERRORS)
def search_batch(state: StateDep, body: BatchSearchRequest) -> dict:
    """Several queries in one request, answered in order."""
    t0 = time.perf_counter()
    searches = [with_urls(state.run_search(q, k=body.k, rerank=body.rerank)) for q in body.queries]
    return {"took_ms": round((time.perf_counter() - t0) * 1e3, 3), "searches": searches}
