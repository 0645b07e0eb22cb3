"""Pydantic models of the JSON API. They describe the dicts the services return (the rows of
``vr search --json`` and the dict of ``localize()``), plus the URLs only HTTP needs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from video_retrieval.web.config import MAX_BATCH, MAX_K, MAX_QUERY_CHARS

GENERATION_DOC = (
    "the index version the id came from (search results carry it); another version answers 409"
)


class SearchHit(BaseModel):
    rank: int = Field(description="1 = best")
    id: int = Field(description="index id of the video (its row); use it with /media, /thumb")
    video: str = Field(description="path of the indexed file")
    score: float
    moment: list[float] = Field(
        min_length=2, max_length=2, description="[start, end] seconds: the best-matching stretch"
    )
    thumbnail_time: float = Field(description="seconds: the best-matching frame")
    thumbnail: str = Field(description="URL of a JPEG of that frame")
    media: str = Field(description="URL of the video (Range requests; a proxy if needed)")


class SearchResponse(BaseModel):
    query: str
    took_ms: float = Field(description="server time of the search (encode, ANN, rerank)")
    generation: int | None = Field(
        None, description="version of the index searched; the hits' URLs carry it as g="
    )
    results: list[SearchHit]


class BatchSearchRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: str | None = Field(None, description="one of /api/info's rerankers")


class BatchSearchResponse(BaseModel):
    took_ms: float
    searches: list[SearchResponse]


class ScoredMoment(BaseModel):
    start: float
    end: float
    score: float


class LocalizeResponse(BaseModel):
    id: int
    video: str
    query: str
    moments: list[ScoredMoment] = Field(description="best first")
    saliency: list[float] = Field(description="one score per clip of clip_len seconds")
    clip_len: float = Field(description="seconds per saliency value")
    clip_seconds: float = Field(description="the same: seconds per saliency value")
    duration: float
    method: str = Field(description="moment_detr (trained head) or zero_shot_index")
    head: str | None = Field(None, description="the trained head's architecture")
    windows: int | None = Field(None, description="windows the head slid over (long videos)")
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
