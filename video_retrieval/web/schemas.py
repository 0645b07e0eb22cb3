"""Pydantic models of the JSON API: the shared shapes of ``video_retrieval.schemas`` (the rows
of ``vr search --json``, the dict of ``localize()``) plus what only HTTP needs (URLs, timing)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from video_retrieval.schemas import Hit, Localization, SearchResult
from video_retrieval.web.config import MAX_BATCH, MAX_K, MAX_QUERY_CHARS

GENERATION_DOC = (
    "the index version the id came from (search results carry it); another version answers 409"
)


class SearchHit(Hit):
    """A row of ``vr search --json`` plus the URLs only HTTP needs."""

    thumbnail: str = Field(description="URL of a JPEG of the best-matching frame")
    media: str = Field(description="URL of the video (Range requests; a proxy if needed)")


class SearchResponse(SearchResult):
    """``vr search --json``'s answer (``schemas.SearchResult``) plus the server's time."""

    took_ms: float = Field(description="server time of the search (encode, ANN, rerank)")
    weights: dict = Field(description="where the index's model weights came from")
    results: list[SearchHit]


class BatchSearchRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: str | None = Field(None, description="one of /api/info's rerankers")


class BatchSearchResponse(BaseModel):
    took_ms: float
    searches: list[SearchResponse]


class LocalizeResponse(Localization):
    """``localize()``'s answer (``schemas.Localization``) for an indexed video."""

    id: int
    took_ms: float


class Health(BaseModel):
    status: str
    videos: int


class ErrorResponse(BaseModel):
    error: str = Field(description="one line: what was wrong and what is allowed")


QUERY_DOC = f"the sentence to search for (1..{MAX_QUERY_CHARS} characters)"
ERRORS = {
    400: {"model": ErrorResponse, "description": "bad value (empty query, unknown reranker)"},
    401: {"model": ErrorResponse, "description": "missing or wrong token (servers with --token)"},
    404: {"model": ErrorResponse, "description": "unknown video id"},
    422: {"model": ErrorResponse, "description": "parameter out of range or malformed"},
}
