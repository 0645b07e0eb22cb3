"""The index directory on disk: atomic files, the journal, generations, the writer lock.

Layout of an index directory (format version 2; version 1 indexes are still read)::

    manifest.json          format version, model fingerprint (encoder.fingerprint() + sampling
                           settings + pooling aggregator), the model and its weights, counts,
                           and ``files``: the generation of videos/pooled/ann files readers use
    videos.<gen>.json      the live videos, sorted by path; row i <-> pooled vector i
    pooled.<gen>.npy       float32 [N, D] L2-normalised pooled vectors (query-independent aggregator)
    ann.<gen>.faiss        FAISS inner-product index over the pooled vectors
    failures.jsonl         files that could not be indexed, with reasons
    shards/<run>-<rank>-<seq>.npy   fp16 [sum T, D] frame embeddings of the videos of one shard
    shards/<run>-<rank>-<seq>.json  per-shard metadata: per video path, size, mtime, sha256,
                                    row offset/length, frame timestamps (s), duration, fps
    journal/<run>-<rank>.jsonl      append-only commit log (one JSON line per event, fsync'd):
                           {"event": "config", ...} the model/sampling a run indexes with,
                           {"event": "shard", ...} a shard is complete (written before this line),
                           {"event": "fail", ...} a file could not be indexed (reason),
                           {"event": "drop", ...} a file was pruned (or lost in a repair),
                           {"event": "touch", ...} a file's mtime changed but not its content
    .lock                  held (flock) by the one writer; names its pid

Consistency rules:

* Every file is written to a hidden temporary name and renamed; a failed write (disk full,
  read-only) removes its temporary file. Temporary files of killed writers are removed by the
  next writer.
* The journal is the source of truth: a shard counts only once its journal line exists.
* Readers never see a half-written update: a run writes a new generation of
  videos/pooled/ann files under new names, then switches ``manifest.json`` (one atomic rename)
  to them; the old generation and the shards only it used are removed after the switch. A
  reader that opened the old generation keeps reading it (open files and memory maps survive
  the unlink on POSIX); one that loses the race re-reads the manifest.
* One writer at a time: ``IndexLock`` (``fcntl.flock``). Run ids are taken under the lock, so
  they are unique.
* Damage is reported as one line naming the file, with the command that rebuilds what can be
  rebuilt (``vr index --index DIR --repair``: videos/pooled/ann and the manifest from the shards
  and the journal).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_write_bytes

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SHARDS = "shards"
JOURNAL = "journal"
FAILURES = "failures.jsonl"
LOCK = ".lock"
# version-1 names (one generation, fixed names)
V1_FILES = {"videos": "videos.json", "pooled": "pooled.npy", "ann": "ann.faiss"}


class IndexDamaged(UserError):
    """A file of an index is missing or unreadable; the message names it and the remedy."""

    def __init__(self, index_dir, file, why: str):
        self.file = str(file)
        super().__init__(
            f"index {index_dir}: {Path(file).name} {why}; rebuild what can be rebuilt with: "
            f"vr index --index {index_dir} --repair"
        )


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


def read_index_json(index_dir, path: Path):
    """JSON of one index file, or ``IndexDamaged`` naming it."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise IndexDamaged(index_dir, path, "is missing") from None
    except json.JSONDecodeError as exc:
        raise IndexDamaged(index_dir, path, f"is not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise IndexDamaged(index_dir, path, "is not UTF-8 text (overwritten or corrupt)") from None


def load_index_npy(index_dir, path: Path, mmap: bool = True) -> np.ndarray:
    """An index array (memory-mapped), or ``IndexDamaged`` naming the file."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise IndexDamaged(index_dir, path, "is missing") from None
    except (ValueError, OSError, EOFError) as exc:
        why = " ".join(str(exc).split())[:120]
        raise IndexDamaged(index_dir, path, f"is truncated or not a .npy array ({why})") from None


# -- the writer lock ---------------------------------------------------------------------------
class IndexLock:
    """Exclusive writer lock of an index folder (``fcntl.flock`` on ``DIR/.lock``).

    A second writer waits (``wait=True``, saying so on stderr once) or raises a one-line
    ``UserError``. The lock dies with its process, so a killed writer never leaves it held.
    """

    def __init__(self, index_dir, wait: bool = True, stream=None):
        self.path = Path(index_dir) / LOCK
        self.wait = wait
        self.stream = stream if stream is not None else sys.stderr
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self) -> IndexLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = self.holder()
                if not self.wait:
                    raise UserError(
                        f"index {self.path.parent} is being written by {who}; wait for it to "
                        "finish or use another --index"
                    ) from None
                print(
                    f"waiting for {who} to finish writing index {self.path.parent} ...",
                    file=self.stream,
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.write(fd, f"vr index (pid {os.getpid()}, since {time.ctime()})\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def writer_active(index_dir) -> bool:
    """True while some process holds the writer lock of ``index_dir``."""
    return lock_held(Path(index_dir) / LOCK)


def lock_held(path: Path) -> bool:
    """True while some process holds an exclusive ``flock`` on ``path``."""
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# -- shards and journal ------------------------------------------------------------------------
def shard_name(run: int, rank: int, seq: int) -> str:
    return f"{run:05d}-{rank:03d}-{seq:06d}"


def write_shard(
    index_dir: str | os.PathLike,
    name: str,
    frames: np.ndarray,
    videos: list[dict],
    patches: np.ndarray | None = None,
) -> dict[str, dict]:
    """Write one shard: the fp16 frame matrix (and patch tokens ``[frames, K, D]``) first,
    then its metadata (all atomically). Returns the size and checksum of each file written
    (``checksums``), for the journal line that commits the shard."""
    from video_retrieval.index.checksums import digest_bytes, npy_bytes

    d = Path(index_dir) / SHARDS
    d.mkdir(parents=True, exist_ok=True)
    written = {}
    parts = (
        [(".patches.npy", patches), (".npy", frames)] if patches is not None else [(".npy", frames)]
    )
    for suffix, array in parts:
        data = npy_bytes(np.asarray(array, dtype=np.float16))
        atomic_write_bytes(d / f"{name}{suffix}", data)
        written[f"{name}{suffix}"] = digest_bytes(data)
    meta = (json.dumps({"shard": name, "videos": videos}, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(d / f"{name}.json", meta)
    written[f"{name}.json"] = digest_bytes(meta)
    return written


def shard_path(index_dir, name: str, part: str = "") -> Path:
    return Path(index_dir) / SHARDS / f"{name}{part}"


def load_shard_meta(index_dir, name: str) -> dict:
    return read_index_json(index_dir, shard_path(index_dir, name, ".json"))


def load_shard_frames(index_dir, name: str, mmap: bool = True) -> np.ndarray:
    return load_index_npy(index_dir, shard_path(index_dir, name, ".npy"), mmap)


def load_shard_patches(index_dir, name: str) -> np.ndarray:
    p = shard_path(index_dir, name, ".patches.npy")
    if not p.exists() and shard_path(index_dir, name, ".npy").exists():
        raise UserError(
            f"{index_dir}: shard {name} has no patch tokens (index built without --patches)"
        )
    return load_index_npy(index_dir, p)


class Journal:
    """Append-only JSON-lines commit log of one (run, rank); each append is fsync'd."""

    def __init__(self, index_dir, run: int, rank: int = 0):
        d = Path(index_dir) / JOURNAL
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"{run:05d}-{rank:03d}.jsonl"

    def append(self, *events: dict) -> None:
        if not events:
            return
        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
        with open(self.path, "a") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_events(index_dir) -> list[dict]:
    """All journal events in commit order (run, rank, line); a torn last line is ignored."""
    d = Path(index_dir) / JOURNAL
    events: list[dict] = []
    if not d.is_dir():
        return events
    for p in sorted(d.glob("*.jsonl")):
        with open(p, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn write of a killed run
                try:
                    event = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # an overwritten line: the other sources of --repair cover it
                if isinstance(event, dict):
                    events.append(event)
    return events


def next_run_id(index_dir) -> int:
    """The next run id; call it under ``IndexLock`` (ids are then unique)."""
    d = Path(index_dir) / JOURNAL
    runs = [int(p.name.split("-")[0]) for p in d.glob("*.jsonl")] if d.is_dir() else []
    return max(runs, default=-1) + 1


@dataclass
class IndexState:
    """The live content of an index according to its journal."""

    videos: dict[str, dict] = field(default_factory=dict)  # path -> shard entry
    failures: dict[str, dict] = field(default_factory=dict)  # path -> {reason, size, mtime_ns,...}
    shards: set[str] = field(default_factory=set)  # every committed shard
    config: dict | None = None  # the last run's {"fingerprint", "model", "embed_dim"[, "store"]}
    shard_files: dict[str, dict] = field(default_factory=dict)  # shard -> {file: checksum}
    dropped: set[str] = field(default_factory=set)  # paths pruned (or lost) since last indexed

    def live_shards(self) -> set[str]:
        return {v["shard"] for v in self.videos.values()}


def replay(index_dir) -> IndexState:
    """The index's live content from its journal; an event that lacks what its kind needs (an
    overwritten line that still parses) is skipped, as an unreadable line is."""
    state = IndexState()
    for e in read_events(index_dir):
        try:
            _apply(state, e)
        except (KeyError, TypeError, AttributeError):
            continue
    return state


def _apply(state: IndexState, e: dict) -> None:
    kind = e.get("event")
    if kind == "shard":
        videos = [{**v, "shard": e["shard"]} for v in e["videos"]]
        state.shards.add(e["shard"])
        if e.get("files"):
            state.shard_files[e["shard"]] = dict(e["files"])
        for v in videos:
            state.videos[v["path"]] = v
            state.failures.pop(v["path"], None)
            state.dropped.discard(v["path"])
    elif kind == "fail":
        state.videos.pop(e["path"], None)
        state.failures[e["path"]] = {k: e[k] for k in e if k not in ("event", "path")}
    elif kind == "drop":
        state.videos.pop(e["path"], None)
        state.failures.pop(e["path"], None)
        state.dropped.add(e["path"])
    elif kind == "touch":
        for table in (state.videos, state.failures):
            if e["path"] in table:
                table[e["path"]].update(size=e["size"], mtime_ns=e["mtime_ns"])
    elif kind == "config":
        state.config = {k: e[k] for k in ("fingerprint", "model", "embed_dim", "store") if k in e}


# -- generations and clean-up ------------------------------------------------------------------
GENERATION_STEMS = ("videos", "pooled", "ann", "checksums")


def generation_files(gen: int) -> dict[str, str]:
    return {
        "videos": f"videos.{gen:06d}.json",
        "pooled": f"pooled.{gen:06d}.npy",
        "ann": f"ann.{gen:06d}.faiss",
        "checksums": f"checksums.{gen:06d}.json",  # the shard files' sizes and checksums
    }


def manifest_files(manifest: dict | None) -> dict[str, str]:
    """The videos/pooled/ann file names a manifest points at (version 1: fixed names)."""
    if not manifest:
        return {}
    return dict(manifest.get("files") or V1_FILES)


def next_generation(manifest: dict | None) -> int:
    return int((manifest or {}).get("generation", 0)) + 1


def previous_generation_files(manifest: dict | None) -> dict[str, str]:
    """The files of the generation before the manifest's (kept for readers that opened it)."""
    gen = int((manifest or {}).get("generation", 0))
    return generation_files(gen - 1) if gen > 1 else {}


def referenced_shards(index_dir, manifest: dict | None) -> set[str]:
    """Shards the manifest's current generation and the one before read: a reader that opened
    either keeps finding its shards until a second update."""
    out: set[str] = set()
    for files in (manifest_files(manifest), previous_generation_files(manifest)):
        if not files:
            continue
        try:
            videos = read_json(Path(index_dir) / files["videos"])
        except (OSError, ValueError):
            continue
        if isinstance(videos, list):
            out |= {v.get("shard") for v in videos if isinstance(v, dict)}
    return out


def clean_temp_files(index_dir) -> int:
    """Remove temporary files of killed writers (``.name.tmpPID``) and stale plans; call it
    under ``IndexLock``."""
    removed = 0
    for d in (Path(index_dir), Path(index_dir) / SHARDS):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and (".tmp" in p.name or p.name.startswith(".plan-")):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def remove_stale_generations(index_dir, manifest: dict) -> None:
    """Delete the files of generations older than the manifest's and the one before it (a
    reader that opened the previous generation keeps reading it until the next update)."""
    keep = set(manifest_files(manifest).values()) | set(
        previous_generation_files(manifest).values()
    )
    for p in Path(index_dir).iterdir():
        stem = p.name.split(".")[0]
        if stem in GENERATION_STEMS and p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)


def remove_orphans(index_dir, state: IndexState, keep: set[str] = frozenset()) -> int:
    """Delete shard files with no journal line (killed mid-run) or with no live video left,
    except the shards in ``keep`` (those the current generation still reads)."""
    d = Path(index_dir) / SHARDS
    if not d.is_dir():
        return 0
    live = state.live_shards() | set(keep)
    removed = 0
    for p in list(d.iterdir()):
        name = p.name.split(".")[0]
        if p.name.startswith(".") or name not in live:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


# -- manifest ----------------------------------------------------------------------------------
def read_manifest(index_dir) -> dict | None:
    """The manifest, None when there is none yet; ``IndexDamaged`` when it is unreadable."""
    p = Path(index_dir) / MANIFEST
    if not p.exists():
        return None
    m = read_index_json(index_dir, p)
    if not isinstance(m, dict) or "fingerprint" not in m:
        raise IndexDamaged(index_dir, p, "is not an index manifest")
    if m.get("format_version") not in READABLE_VERSIONS:
        raise UserError(
            f"{index_dir}: index format version {m.get('format_version')} is not supported "
            f"(this vr reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild it "
            "with vr index"
        )
    return m


def store_summary(manifest: dict) -> dict:
    """Where the index's vectors are: ``{"kind": "faiss"}`` (this folder) or Milvus's URI and
    collections (``{"kind": "milvus", "uri", "collections"}``, ``index.milvus``)."""
    entry = manifest.get("store") or {"kind": "faiss"}
    return {k: entry[k] for k in ("kind", "uri", "collections") if k in entry}


def fingerprint_mismatch(a: dict, b: dict) -> list[str]:
    """The fingerprint keys on which two fingerprints differ (empty when equal)."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def is_index_dir(index_dir) -> bool:
    return (Path(index_dir) / MANIFEST).exists() or (Path(index_dir) / JOURNAL).is_dir()


def disk_error_line(exc: OSError) -> str:
    """The reason of a failed write, for messages (disk full, read-only, permission)."""
    names = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system"}
    return names.get(exc.errno, exc.strerror or type(exc).__name__)
