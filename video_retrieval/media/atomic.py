"""Atomic file writes: a reader sees a file's old content or its complete new content, never
a half-written one.

Everything is written into a hidden temporary file beside the target (same folder, so the
rename stays within one file system), flushed and fsync'd, renamed onto the target, and then
the folder is fsync'd so that the rename itself survives a crash. Any failure removes the
temporary file and re-raises; the target keeps its old content. Temporary names start with
``.`` and contain ``.tmp`` (``index.files.clean_temp_files`` removes leftovers of a killed
run) and keep the target's suffix, for writers that choose a format by it (ffmpeg, matplotlib,
``np.savez``).

Imports only the standard library and numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np


def tmp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name this process and thread write ``path`` under."""
    p = Path(path)
    return p.with_name(f".{p.stem}.tmp{os.getpid()}-{threading.get_ident()}{p.suffix}")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (its entries: a rename into it); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(out) as tmp:`` write ``tmp`` by any means (a subprocess, a library
    that takes a file name); on leaving the block it is fsync'd and renamed onto ``out``. An
    exception inside the block removes ``tmp`` and leaves ``out`` as it was."""
    out = Path(path)
    tmp = tmp_path(out)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(out)  # a write into an open file names none (a full disk)
        raise
    fsync_dir(out.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into the temporary file (opened ``wb``), then rename onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, sort_keys: bool = True) -> None:
    """``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array)))


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` of ``arrays`` (uncompressed), creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(path: str | os.PathLike, obj) -> None:
    """``torch.save(obj)`` (a checkpoint) atomically, creating the folder if needed."""
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))
