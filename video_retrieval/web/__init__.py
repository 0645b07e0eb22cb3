"""``vr serve``: the index as an HTTP/JSON service with a search page.

Layout (FastAPI's "Bigger Applications")::

    app.py       create_app(config) -> FastAPI; lifespan loads everything once; JSON errors
    config.py    ServeConfig and the request limits
    state.py     ServiceState (index, models, services, caches) and load_state(config)
    services.py  SearchService, LocalizeService: the work, callable without HTTP
    media.py     browser playability (PyAV), proxies (ffmpeg-python), thumbnails, disk caches
    deps.py      StateDep, the token guard, the request log
    schemas.py   Pydantic models of the API
    routers/     meta (/healthz, /api/info), search, localize, media (/media, /thumb), page (/)
    static/      index.html, app.js, style.css

Without HTTP::

    >>> from video_retrieval.web import ServeConfig, load_state               # doctest: +SKIP
    >>> state = load_state(ServeConfig(index="demo_out/index"))               # doctest: +SKIP
    >>> state.search.search("a red circle grows", k=3)                        # doctest: +SKIP
    >>> state.localize.localize(0, "a red circle grows", top=3)               # doctest: +SKIP
"""

from __future__ import annotations

from video_retrieval.web.app import create_app
from video_retrieval.web.config import ServeConfig
from video_retrieval.web.state import ServiceState, load_state

__all__ = ["ServeConfig", "ServiceState", "create_app", "load_state"]
