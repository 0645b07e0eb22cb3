"""Settings of ``vr serve`` and the request limits every route enforces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from video_retrieval.errors import UserError
from video_retrieval.limits import check

# Request limits (also in the OpenAPI schema at /docs).
MAX_QUERY_CHARS = 300  # the CLIP text tower reads at most 77 tokens
MAX_K = 100  # results per search
MAX_BATCH = 32  # queries per POST /api/search
MAX_TOP = 20  # moments per localize request
MAX_IMAGES = 8  # images per query by example (a query set)
MAX_UPLOAD_BYTES = 32 * 2**20  # the body of an image or clip upload to POST /api/search
MAX_CLIP_SECONDS = 300.0  # the longest moment GET /media/{id}/clip cuts
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
# Host names a token-less server answers to (requests naming another host are refused)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """What ``vr serve`` loads and how it answers.

    ``cache_dir`` (default ``<index>/serve_cache``) holds thumbnails and browser-playable proxies,
    each bounded in size (least recently used files go first)."""

    index: str | Path
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    localize_checkpoint: str | None = None
    rerank: str = "auto"
    candidates: int = 100
    alpha: float = 0.4
    clip_len: float = 2.0  # seconds per saliency clip of the zero-shot localizer
    cache_dir: str | Path | None = None
    thumb_cache_mb: float = 64.0
    media_cache_mb: float = 2048.0
    clip_cache_mb: float = 512.0  # exported moments (GET /media/{id}/clip)
    encodings_cached: int = 16  # videos whose moment-head encodings stay in memory
    transcode_timeout_s: float = 900.0
    reload_interval: float = 5.0  # seconds between checks for an updated index (0: never)

    def check(self) -> ServeConfig:
        """Refuse settings that would expose the index or give meaningless answers."""
        if not is_loopback(self.host) and not self.token:
            raise UserError(
                f"binding {self.host} makes the index reachable from other machines: give "
                "--token (or VR_SERVE_TOKEN) so requests must carry it, or keep --host 127.0.0.1"
            )
        if self.token is not None and len(self.token) < 8:
            raise UserError("--token must be at least 8 characters")
        if not 0 <= int(self.port) <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        self.candidates = check("candidates", self.candidates)  # the CLI's bounds
        self.alpha = check("alpha", self.alpha)
        if self.thumb_cache_mb <= 0 or self.media_cache_mb <= 0:
            raise UserError("cache sizes must be positive (MB)")
        if self.reload_interval < 0:
            raise UserError(f"--reload-interval must be >= 0 seconds, got {self.reload_interval}")
        if self.clip_len <= 0:
            raise UserError(f"--clip-len must be > 0, got {self.clip_len}")
        return self

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.index) / "serve_cache"
