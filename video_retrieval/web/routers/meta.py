"""``/healthz`` and ``/api/info``."""

from __future__ import annotations

from fastapi import APIRouter

from video_retrieval.web.deps import StateDep
from video_retrieval.web.schemas import Health

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health, summary="200 once the models are loaded")
def healthz(state: StateDep) -> dict:
    return {"status": "ok", "videos": len(state.index)}


@router.get("/api/info", summary="index, models, limits, cache use and mean timings per step")
def info(state: StateDep) -> dict:
    return state.info()
