"""``/healthz``, ``/api/info`` and ``POST /api/reload``."""

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


@router.post("/api/reload", summary="serve the index's newest generation now (after vr index)")
def reload(state: StateDep) -> dict:
    """Check the index on disk now instead of at the next ``--reload-interval`` tick. Ids of
    videos are those of the generation served: search again after a reload."""
    reloaded = state.reload_if_changed()
    return {
        "reloaded": reloaded,
        "generation": state.index.manifest.get("generation"),
        "videos": len(state.index),
        "reload_error": state.reload_error,
    }
