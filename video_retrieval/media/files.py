"""Finding video files and telling whether they changed.

``find_videos`` expands the paths given on the command line: a file is taken as given (whatever
its extension, so a wrong file is reported as a failure rather than silently ignored); a folder is
walked recursively for files with a known video extension. Hidden files and folders (``.name``,
e.g. the temporary files of an interrupted writer) are skipped.

Example::

    >>> from video_retrieval.media.files import find_videos
    >>> find_videos(["clips/", "extra/talk.mkv"])          # doctest: +SKIP
    [PosixPath('/abs/clips/a.mp4'), PosixPath('/abs/clips/sub/b.webm'), ...]
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from video_retrieval.errors import UserError

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".qt", ".3gp", ".3g2", ".mpg",
        ".mpeg", ".mpe", ".m2v", ".ts", ".mts", ".m2ts", ".vob", ".ogv", ".ogg", ".flv",
        ".f4v", ".wmv", ".asf", ".rm", ".rmvb", ".divx", ".mxf", ".dv", ".gif", ".y4m",
    }
)  # fmt: skip


def is_video_name(path: str | os.PathLike) -> bool:
    """True when the file name ends with a known video extension (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_videos(inputs, recursive: bool = True) -> list[Path]:
    """Absolute, de-duplicated, sorted video paths under ``inputs`` (files and/or folders).

    Raises ``UserError`` for a path that does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: set[Path] = set()
    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise UserError(f"no such file or folder: {raw}")
        p = p.resolve()
        if p.is_file():
            found.add(p)
            continue
        if recursive:
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not _hidden(d))
                for f in files:
                    if not _hidden(f) and is_video_name(f):
                        found.add(Path(root) / f)
        else:
            for f in p.iterdir():
                if f.is_file() and not _hidden(f.name) and is_video_name(f):
                    found.add(f)
    return sorted(found)


@dataclass(frozen=True)
class FileSignature:
    """Cheap change detector: size and modification time (ns)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileSignature:
        st = os.stat(path)
        return cls(int(st.st_size), int(st.st_mtime_ns))


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes (hex); used when size/mtime changed to confirm a real change."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def display_path(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text for JSON meant for browsers: a byte that is not UTF-8 (kept
    by Python as a surrogate escape) becomes ``\\xNN``, as ``ls -b`` shows it. Names that are
    UTF-8 are returned unchanged."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
