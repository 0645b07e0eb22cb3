"""``create_app(config)``: the FastAPI application of ``vr serve`` (FastAPI's "Bigger
Applications" layout: one router per area, shared pieces in ``deps``).

The lifespan loads the index and every model once (``state.load_state``) before the server
accepts a request and keeps them for its lifetime; a ready ``ServiceState`` can be passed
instead (tests share one across apps). It also starts the ``IndexWatcher`` that serves a
re-indexed index's new generation (``ServeConfig.reload_interval``). Routes are plain ``def``
functions, so FastAPI runs them in its thread pool and model calls never block the event loop. Every error is JSON
(``{"error": "one line"}``) and logged as one line.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from video_retrieval import __version__
from video_retrieval.errors import UserError, VideoDecodeError
from video_retrieval.media.write import FFmpegError
from video_retrieval.web.config import LOOPBACK_HOSTS, ServeConfig
from video_retrieval.web.deps import AccessLog, HostGuard, TokenGuard
from video_retrieval.web.routers import localize, media, meta, page, search
from video_retrieval.web.routers.page import STATIC
from video_retrieval.web.services import NotFound, StaleId
from video_retrieval.web.state import IndexWatcher, ServiceState, load_state

log = logging.getLogger("video_retrieval.web")

DESCRIPTION = """Search an index of videos with a sentence, watch the moment, localize it.

Every error is JSON: `{"error": "one line"}`. With `--token`, send `Authorization: Bearer TOKEN`
(or `?token=TOKEN`) on every request except `/healthz`."""


def _error(request: Request, status: int, message: str, headers=None) -> JSONResponse:
    log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _one_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return _error(request, 404, str(exc))

    @app.exception_handler(StaleId)
    async def stale(request: Request, exc: StaleId):
        return _error(request, 409, str(exc))

    @app.exception_handler(FFmpegError)
    async def ffmpeg_failed(request: Request, exc: FFmpegError):
        return _error(request, 500, f"could not make a playable copy: {exc}")

    @app.exception_handler(VideoDecodeError)
    async def decode_failed(request: Request, exc: VideoDecodeError):
        return _error(request, 500, f"could not decode the video: {exc}")

    @app.exception_handler(UserError)
    async def bad_value(request: Request, exc: UserError):
        return _error(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(request, 422, _one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page: {request.url.path}"
        return _error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("%s %s crashed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)


def add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI 5 (it reads the OpenAPI 3.1 document FastAPI writes; version 4
    cannot) from the ``swagger-ui-py`` package's files, served by the app itself (FastAPI's
    default page loads it from a CDN, which an offline machine cannot reach). A token given as
    ``?token=`` is passed on to the page's ``/openapi.json`` request."""
    import swagger_ui
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(swagger_ui.__file__).parent / "static"
    app.mount("/static/swagger", StaticFiles(directory=str(assets)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        token = request.query_params.get("token")
        url = app.openapi_url + (f"?token={quote(token)}" if token else "")
        return get_swagger_ui_html(
            openapi_url=url,
            title=f"{app.title} - API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def create_app(
    config: ServeConfig | None = None, state: ServiceState | None = None, access_log: bool = False
) -> FastAPI:
    """The service for ``config`` (or around an already loaded ``state``)."""
    if config is None and state is None:
        raise ValueError("give a ServeConfig or a loaded ServiceState")
    config = (config or state.config).check()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = (
            state if state is not None else await run_in_threadpool(load_state, config)
        )
        watcher = None
        if config.reload_interval > 0:
            watcher = IndexWatcher(lambda: app.state.service, config.reload_interval).start()
        yield
        if watcher is not None:
            watcher.stop()
        app.state.service = None

    app = FastAPI(
        title="vr serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # add_docs: served locally
        redoc_url=None,
    )
    add_docs(app)
    for r in (meta, search, localize, media, page):
        app.include_router(r.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app)
    app.add_middleware(TokenGuard, token=config.token)
    if config.token is None:  # loopback only (config.check): refuse other Host names
        app.add_middleware(HostGuard, allowed=LOOPBACK_HOSTS | {config.host})
    if access_log:
        app.add_middleware(AccessLog)
    return app
