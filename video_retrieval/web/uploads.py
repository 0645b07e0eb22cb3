"""``POST /api/search`` with ``multipart/form-data``: a query by example uploaded to the server.

Fields: ``image`` (a file, repeatable up to ``MAX_IMAGES``: a query set), optional ``q`` (text +
image) and ``image_weight``; or ``video`` (a clip file) with optional ``start``/``end``; and ``k``,
``rerank``, ``include_self``. The whole body is read with a bound (``MAX_UPLOAD_BYTES``; more is a
413 before anything is parsed); images are decoded with Pillow by ``media.image.read_image``
(a non-image or a decompression bomb is a 400 with one line), a video is written to a temporary
file beside the server's caches, searched and removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fastapi import Request
from starlette.exceptions import HTTPException

from video_retrieval.errors import UserError
from video_retrieval.web.config import MAX_IMAGES, MAX_QUERY_CHARS, MAX_UPLOAD_BYTES

FIELDS = {"image", "video", "q", "image_weight", "k", "rerank", "start", "end", "include_self"}


@dataclass
class Upload:
    images: list[bytes] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    video: bytes | None = None
    video_name: str = ""
    q: str | None = None
    image_weight: float = 0.5
    k: int = 10
    rerank: str | None = None
    start: float | None = None
    end: float | None = None
    include_self: bool = False


async def read_body(request: Request, limit: int = MAX_UPLOAD_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (also when the
    client sends no Content-Length)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the upload is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _number(form, name: str, kind, default):
    raw = form.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise UserError(f"{name} must be a form field, not a file")
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"{name} must be a number, got {raw[:40]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {raw[:40]!r}")
    return value


async def parse_upload(request: Request) -> Upload:
    """The fields of a multipart query by example (module doc); one-line errors."""
    body = await read_body(request)
    request._body = body  # the form parser reads the body we bounded, not the socket again
    try:
        form = await request.form(max_files=MAX_IMAGES + 1, max_fields=len(FIELDS) + 4)
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's errors: one line for the client
        why = " ".join(str(getattr(exc, "detail", exc)).split())[:160] or type(exc).__name__
        raise UserError(f"malformed multipart body ({why})") from None
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise UserError(f"unknown field {unknown[0]!r}: send {', '.join(sorted(FIELDS))}")
    up = Upload()
    for item in form.getlist("image"):
        if isinstance(item, str):
            raise UserError("image must be a file (multipart upload), not a text field")
        up.images.append(await item.read())
        up.names.append(item.filename or f"image {len(up.images)}")
    if len(up.images) > MAX_IMAGES:
        raise UserError(f"{len(up.images)} images; at most {MAX_IMAGES} per query")
    videos = form.getlist("video")
    if len(videos) > 1:
        raise UserError("one video per query")
    if videos:
        if isinstance(videos[0], str):
            raise UserError("video must be a file (multipart upload), not a text field")
        up.video = await videos[0].read()
        up.video_name = videos[0].filename or "upload"
    q = form.get("q")
    if q is not None:
        if not isinstance(q, str) or not q.strip():
            raise UserError("q is empty: give a sentence, or leave q out")
        if len(q.strip()) > MAX_QUERY_CHARS:
            raise UserError(f"q has {len(q.strip())} characters; the limit is {MAX_QUERY_CHARS}")
        up.q = q.strip()
    up.image_weight = _number(form, "image_weight", float, 0.5)
    up.k = _number(form, "k", int, 10)
    up.start = _number(form, "start", float, None)
    up.end = _number(form, "end", float, None)
    rerank = form.get("rerank")
    up.rerank = rerank.strip() if isinstance(rerank, str) and rerank.strip() else None
    flag = form.get("include_self")
    up.include_self = isinstance(flag, str) and flag.strip().lower() in ("1", "true", "yes", "on")
    await form.close()
    if not up.images and up.video is None:
        raise UserError("send an image (field image) or a video clip (field video)")
    if up.images and up.video is not None:
        raise UserError("send images or a video, not both")
    if up.video is not None and up.q is not None:
        raise UserError("q combines with images only")
    return up
