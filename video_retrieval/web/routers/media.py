"""``/media/{id}``: an indexed video (or its browser-playable proxy) with HTTP Range;
``/media/{id}/clip?start=&end=``: a moment of it as a downloadable MP4; ``/thumb/{id}?t=``: a
JPEG of one frame. Only index ids are accepted, never a path."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from video_retrieval.errors import UserError
from video_retrieval.web.config import MAX_CLIP_SECONDS
from video_retrieval.web.deps import StateDep
from video_retrieval.web.schemas import ERRORS, GENERATION_DOC

router = APIRouter(tags=["media"])

VideoId = Annotated[str, Path(description="index id of the video (from /api/search)")]
Generation = Annotated[int | None, Query(description=GENERATION_DOC)]
_MEDIA_RESPONSES = {
    **ERRORS,
    206: {"description": "the requested byte range (Range: bytes=a-b)"},
    416: {"description": "range not satisfiable"},
}


def range_error(header: str | None, size: int) -> JSONResponse | None:
    """A JSON 400/416 for a Range header Starlette's FileResponse would refuse, else None (the
    same parser decides, so the checks agree; FileResponse itself answers such errors in text)."""
    if not header:
        return None
    from starlette import responses

    parse = getattr(responses.FileResponse, "_parse_range_header", None)
    if parse is None:  # another Starlette: let FileResponse answer
        return None
    try:
        parse(header, size)
    except responses.RangeNotSatisfiable:
        return JSONResponse(
            {"error": f"range {header!r} is outside the file ({size} bytes)"},
            status_code=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    except responses.MalformedRangeHeader as exc:
        return JSONResponse({"error": f"malformed Range header: {exc.content}"}, status_code=400)
    return None


@router.head("/media/{vid}", include_in_schema=False)
@router.get("/media/{vid}", responses=_MEDIA_RESPONSES)
def media(state: StateDep, vid: VideoId, request: Request, g: Generation = None):
    """The video file, or an H.264 MP4 proxy of it when browsers cannot play its codec or
    container (made on the first request, then cached). Honours Range (206) for seeking."""
    state.check_generation(g)
    _row, _entry, path = state.source(vid)
    info = state.media(path)
    file = path if info.playable else state.proxies.get(path, info)
    bad = range_error(request.headers.get("range"), os.stat(file).st_size)
    if bad is not None:
        return bad
    return FileResponse(
        file,
        media_type=info.mime,
        headers={
            "Cache-Control": "private, max-age=3600",
            "X-Media-Source": "original" if info.playable else "proxy",
        },
    )


@router.get(
    "/media/{vid}/clip",
    responses={**ERRORS, 200: {"content": {"video/mp4": {}}, "description": "the moment (MP4)"}},
)
def clip(
    state: StateDep,
    vid: VideoId,
    start: Annotated[float, Query(ge=0, description="seconds into the video")],
    end: Annotated[float, Query(gt=0, description="seconds into the video")],
    copy: Annotated[
        bool, Query(description="stream copy from the keyframe at or before start (fast)")
    ] = False,
    g: Generation = None,
):
    """The moment ``start``-``end`` of an indexed video as a downloadable MP4 (at most
    ``MAX_CLIP_SECONDS``; a range outside the video is a 400): cut exactly (re-encoded H.264,
    faststart) or, with ``copy``, copied from the keyframe at or before ``start`` (the
    ``X-Clip-Start`` header says where it starts). Cached."""
    from video_retrieval.media.cut import check_range, clip_name, keyframe_before

    state.check_generation(g)
    _row, entry, path = state.source(vid)
    info = state.media(path)  # refuses a file that is no longer a video
    duration = float(entry.get("duration") or 0.0)
    s, e = check_range(start, end, duration, MAX_CLIP_SECONDS)
    first = keyframe_before(path, s) if copy else s
    file = state.clips.get(path, s, e, copy=copy)
    return FileResponse(
        file,
        media_type="video/mp4",
        filename=clip_name(path, s, e),
        headers={
            "Cache-Control": "private, max-age=3600",
            "X-Clip-Start": f"{first:.6f}",
            "X-Media-Source": "copy" if copy else "exact",
            "X-Source-Codec": info.video_codec,
        },
    )


@router.get("/thumb/{vid}", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}})
def thumbnail(
    state: StateDep,
    vid: VideoId,
    t: Annotated[float, Query(ge=0, description="seconds into the video")] = 0.0,
    g: Generation = None,
):
    """A JPEG of the frame presented at ``t`` (rounded to 0.1 s; cached on disk, bounded)."""
    state.check_generation(g)
    _row, entry, path = state.source(vid)
    duration = float(entry.get("duration", 0.0))
    if duration and t > duration + 0.05:
        raise UserError(f"t={t:g} is past the end of the video ({duration:g} s)")
    jpg = state.thumbs.get(path, t, duration)
    return FileResponse(
        jpg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )
