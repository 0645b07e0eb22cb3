"""Shared pieces of the routes: the loaded state, the token guard and the request log."""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, Request

from video_retrieval.web.state import ServiceState

log = logging.getLogger("video_retrieval.web")
access_log = logging.getLogger("video_retrieval.web.access")

# answered without a token: they hold no index content (the page's code, the health check)
OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def _json_error(status: int, message: str, headers: list | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class TokenGuard:
    """ASGI middleware: with a token set, every path but ``OPEN_PATHS``/``OPEN_PREFIXES`` needs
    ``Authorization: Bearer T`` or ``?token=T`` (for <img>/<video> URLs); else 401 JSON."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    def _supplied(self, scope) -> bytes:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:].strip()
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return qs.get("token", [""])[0].encode()

    async def __call__(self, scope, receive, send):
        if (
            self.token is not None
            and scope["type"] == "http"
            and scope["path"] not in OPEN_PATHS
            and not scope["path"].startswith(OPEN_PREFIXES)
            and not secrets.compare_digest(self._supplied(scope), self.token)
        ):
            log.warning("%s %s -> 401: missing or wrong token", scope["method"], scope["path"])
            start, body = _json_error(
                401,
                "this server needs its token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN",
                [(b"www-authenticate", b"Bearer")],
            )
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)


class HostGuard:
    """ASGI middleware for a server without a token: only requests addressed to a loopback
    name (``Host: 127.0.0.1:8000``, ``localhost``, ``[::1]``) are answered, so a web page whose
    domain is re-pointed at 127.0.0.1 (DNS rebinding) cannot read the index; else 400 JSON."""

    def __init__(self, app, allowed: set[str]):
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    @staticmethod
    def hostname(value: str) -> str:
        value = value.strip().lower()
        if value.startswith("["):  # [::1]:8000
            return value[1 : value.find("]")] if "]" in value else value
        return value.rsplit(":", 1)[0] if value.count(":") == 1 else value

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = ""
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = self.hostname(value.decode("latin-1"))
            if host not in self.allowed:
                log.warning("%s %s -> 400: Host %r refused", scope["method"], scope["path"], host)
                start, body = _json_error(
                    400,
                    f"Host {host!r} is not this machine: open the page as http://127.0.0.1:PORT/ "
                    "(or serve with --token)",
                )
                await send(start)
                await send(body)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """ASGI middleware: one line per request (method, path without the query string, which
    may hold the token, status, milliseconds). Replaces uvicorn's access log."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status[0], ms)
