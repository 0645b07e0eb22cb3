"""The index directory on disk and the ``Index`` Python API.

Layout of an index directory::

    manifest.json          format version, model fingerprint (encoder.fingerprint() + sampling
                           settings + pooling aggregator), how to rebuild the model, counts
    shards/<run>-<rank>-<seq>.npy   fp16 [sum T, D] frame embeddings of the videos of one shard
    shards/<run>-<rank>-<seq>.json  per-shard metadata: per video path, size, mtime, sha256,
                                    row offset/length, frame timestamps (s), duration, fps
    journal/<run>-<rank>.jsonl      append-only commit log (one JSON line per event, fsync'd):
                           {"event": "shard", ...} a shard is complete (written before this line),
                           {"event": "fail", ...} a file could not be indexed (reason),
                           {"event": "drop", ...} a file was pruned, {"event": "touch", ...} a
                           file's mtime changed but not its content
    videos.json            the live videos, sorted by path; row i <-> pooled vector i
    pooled.npy             float32 [N, D] L2-normalised pooled vectors (query-independent aggregator)
    ann.faiss              FAISS inner-product index over pooled.npy (ann.choose_kind by size)
    failures.jsonl         files that could not be indexed, with reasons

Every file is written to a temporary name and renamed. The journal is the source of truth: a
shard counts only once its journal line exists (shards without one are orphans of a killed run
and are deleted); ``videos.json``/``pooled.npy``/``ann.faiss`` are rebuilt from the live shards
at the end of every ``vr index`` run, so a killed run followed by the same command gives the
same index as an uninterrupted one.

Example::

    >>> from video_retrieval import Index
    >>> index = Index.build(["videos/"], "my_index", model="vr-tiny", fps=1.0)  # doctest: +SKIP
    >>> hits = Index.open("my_index").search("a red circle moves left", k=5)   # doctest: +SKIP
    >>> hits[0].video, hits[0].score, hits[0].moment                            # doctest: +SKIP
    ('/abs/videos/v3.mp4', 0.41, (2.0, 5.5))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
JOURNAL = "journal"
POOLED = "pooled.npy"
VIDEOS = "videos.json"
ANN = "ann.faiss"
FAILURES = "failures.jsonl"


# -- atomic writes -----------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(path: Path) -> None:
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


# -- shards and journal ------------------------------------------------------------------------
def shard_name(run: int, rank: int, seq: int) -> str:
    return f"{run:05d}-{rank:03d}-{seq:06d}"


def write_shard(
    index_dir: str | os.PathLike,
    name: str,
    frames: np.ndarray,
    videos: list[dict],
    patches: np.ndarray | None = None,
) -> None:
    """Write one shard: the fp16 frame matrix (and patch tokens ``[frames, K, D]``) first,
    then its metadata (all atomically)."""
    d = Path(index_dir) / SHARDS
    d.mkdir(parents=True, exist_ok=True)
    if patches is not None:
        atomic_save_npy(d / f"{name}.patches.npy", np.asarray(patches, dtype=np.float16))
    atomic_save_npy(d / f"{name}.npy", np.asarray(frames, dtype=np.float16))
    atomic_write_json(d / f"{name}.json", {"shard": name, "videos": videos})


def load_shard_meta(index_dir, name: str) -> dict:
    return read_json(Path(index_dir) / SHARDS / f"{name}.json")


def load_shard_frames(index_dir, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(Path(index_dir) / SHARDS / f"{name}.npy", mmap_mode="r" if mmap else None)


def load_shard_patches(index_dir, name: str) -> np.ndarray:
    p = Path(index_dir) / SHARDS / f"{name}.patches.npy"
    if not p.exists():
        raise UserError(
            f"{index_dir}: shard {name} has no patch tokens (index built without --patches)"
        )
    return np.load(p, mmap_mode="r")


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
        with open(p) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn write of a killed run
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return events


def next_run_id(index_dir) -> int:
    d = Path(index_dir) / JOURNAL
    runs = [int(p.name.split("-")[0]) for p in d.glob("*.jsonl")] if d.is_dir() else []
    return max(runs, default=-1) + 1


@dataclass
class IndexState:
    """The live content of an index according to its journal."""

    videos: dict[str, dict] = field(default_factory=dict)  # path -> shard entry
    failures: dict[str, dict] = field(default_factory=dict)  # path -> {reason, size, mtime_ns,...}
    shards: set[str] = field(default_factory=set)  # every committed shard

    def live_shards(self) -> set[str]:
        return {v["shard"] for v in self.videos.values()}


def replay(index_dir) -> IndexState:
    state = IndexState()
    for e in read_events(index_dir):
        kind = e.get("event")
        if kind == "shard":
            state.shards.add(e["shard"])
            for v in e["videos"]:
                state.videos[v["path"]] = {**v, "shard": e["shard"]}
                state.failures.pop(v["path"], None)
        elif kind == "fail":
            state.videos.pop(e["path"], None)
            state.failures[e["path"]] = {k: e[k] for k in e if k not in ("event", "path")}
        elif kind == "drop":
            state.videos.pop(e["path"], None)
            state.failures.pop(e["path"], None)
        elif kind == "touch":
            for table in (state.videos, state.failures):
                if e["path"] in table:
                    table[e["path"]].update(size=e["size"], mtime_ns=e["mtime_ns"])
    return state


def remove_orphans(index_dir, state: IndexState) -> int:
    """Delete shard files with no journal line (killed mid-run) or with no live video left."""
    d = Path(index_dir) / SHARDS
    if not d.is_dir():
        return 0
    live = state.live_shards()
    removed = 0
    for p in list(d.iterdir()):
        name = p.name.split(".")[0]
        stale_tmp = p.name.startswith(".")
        if stale_tmp or name not in live:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def read_manifest(index_dir) -> dict | None:
    p = Path(index_dir) / MANIFEST
    if not p.exists():
        return None
    m = read_json(p)
    if m.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{index_dir}: index format version {m.get('format_version')} is not supported "
            f"(this vr reads version {FORMAT_VERSION}); rebuild it with vr index"
        )
    return m


def fingerprint_mismatch(a: dict, b: dict) -> str | None:
    """A one-line description of how two fingerprints differ, or None when equal."""
    if a == b:
        return None
    diffs = [
        f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    return "; ".join(diffs)


# -- the public API ----------------------------------------------------------------------------
@dataclass
class Hit:
    """One search result; ``moment`` and ``thumbnail_time`` are seconds."""

    rank: int
    video: str
    score: float
    moment: tuple[float, float]
    thumbnail_time: float
    base_score: float = 0.0

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "video": self.video,
            "score": round(float(self.score), 6),
            "moment": {"start": round(self.moment[0], 3), "end": round(self.moment[1], 3)},
            "thumbnail_time": round(self.thumbnail_time, 3),
        }


class Index:
    """A built index: ``Index.build(...)`` to create/update, ``Index.open(dir)`` to query.

    Example::

        >>> idx = Index.open("my_index")                                   # doctest: +SKIP
        >>> for hit in idx.search("a blue square grows", k=3, rerank="cliprerank"):
        ...     print(hit.rank, hit.video, round(hit.score, 3), hit.moment)  # doctest: +SKIP
    """

    def __init__(self, index_dir, manifest: dict, videos: list[dict], pooled: np.ndarray):
        self.dir = Path(index_dir)
        self.manifest = manifest
        self.videos = videos
        self.pooled = pooled
        self._ann = None
        self._models = None
        self._shard_cache: dict[str, np.ndarray] = {}
        self.build_summary: dict | None = None

    # construction
    @classmethod
    def open(cls, index_dir, encoder=None) -> Index:
        """Open a built index. ``encoder`` (optional) must have the index's fingerprint."""
        d = Path(index_dir)
        manifest = read_manifest(d)
        if manifest is None or not (d / VIDEOS).exists():
            raise UserError(f"{index_dir} is not an index directory (build one with vr index)")
        videos = read_json(d / VIDEOS)
        pooled = np.load(d / POOLED, mmap_mode="r")
        if (
            not manifest.get("complete")
            or len(videos) != manifest["counts"]["videos"]
            or pooled.shape[0] != len(videos)
        ):
            raise UserError(
                f"index {index_dir} is incomplete (an indexing run was interrupted); "
                "run the same vr index command again to finish it"
            )
        idx = cls(d, manifest, videos, pooled)
        if encoder is not None:
            idx.check_encoder(encoder)
            idx._models = (encoder, idx._pool_aggregator(None))
        return idx

    @classmethod
    def build(cls, inputs, index_dir, **options) -> Index:
        """Index ``inputs`` (video files and/or folders) into ``index_dir`` and open it.

        Options are those of ``indexer.IndexConfig`` (``model``, ``pretrained``, ``checkpoint``,
        ``fps``, ``num_frames``, ``batch_size``, ``workers``, ``devices``, ``prune``, ...).
        Running it again adds new files, re-encodes changed ones and (``prune=True``) drops
        deleted ones. The run's summary is in ``.build_summary``.
        """
        from video_retrieval.indexer import IndexConfig, run_indexing

        summary = run_indexing(inputs, index_dir, IndexConfig(**options))
        idx = cls.open(index_dir)
        idx.build_summary = summary
        return idx

    # properties
    def __len__(self) -> int:
        return len(self.videos)

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def check_encoder(self, encoder) -> None:
        fp = encoder.fingerprint()
        if fp != self.fingerprint["encoder"]:
            raise UserError(
                f"index {self.dir} was built with model {self.fingerprint['encoder']}, not with the "
                f"loaded model {fp}; search it with the same model or rebuild it"
            )

    def _pool_aggregator(self, checkpoint_aggregator):
        from video_retrieval.temporal import build_aggregator

        if checkpoint_aggregator is not None and not checkpoint_aggregator.query_dependent:
            return checkpoint_aggregator.eval()
        return build_aggregator("mean", self.embed_dim)

    def models(self):
        """(encoder, pooling aggregator), rebuilt from the manifest on first use."""
        if self._models is None:
            m = self.manifest["model"]
            agg = None
            if m.get("checkpoint"):
                ckpt = m["checkpoint"]
                if not os.path.exists(ckpt):
                    raise UserError(f"the index's checkpoint {ckpt} is missing")
                from video_retrieval.model_io import load_retrieval_model

                encoder, agg, _ = load_retrieval_model(ckpt)
            else:
                from video_retrieval.encoders import create_encoder

                encoder = create_encoder(**m["encoder_spec"])
            encoder.eval()
            self.check_encoder(encoder)
            self._models = (encoder, self._pool_aggregator(agg))
        return self._models

    def ann(self):
        if self._ann is None:
            from video_retrieval.ann import load_ann

            self._ann = load_ann(self.dir / ANN)
        return self._ann

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored frame embeddings (float32 [T,D]) and timestamps (s) of video row ``i``."""
        v = self.videos[i]
        arr = self._shard_cache.get(v["shard"])
        if arr is None:
            arr = self._shard_cache[v["shard"]] = load_shard_frames(self.dir, v["shard"])
        o, n = v["offset"], v["length"]
        return np.asarray(arr[o : o + n], dtype=np.float32), np.asarray(v["timestamps"])

    @property
    def patch_topk(self) -> int:
        """Patch tokens stored per frame (0: none; ``vr index --patches K``)."""
        return int((self.manifest["fingerprint"].get("patches") or {}).get("topk", 0))

    def patches(self, i: int) -> np.ndarray:
        """Stored projected patch tokens (float32 [T,K,D]) of video row ``i``."""
        if not self.patch_topk:
            raise UserError(f"index {self.dir} stores no patch tokens: rebuild it with --patches K")
        v = self.videos[i]
        key = v["shard"] + ".patches"
        arr = self._shard_cache.get(key)
        if arr is None:
            arr = self._shard_cache[key] = load_shard_patches(self.dir, v["shard"])
        o, n = v["offset"], v["length"]
        return np.asarray(arr[o : o + n], dtype=np.float32)

    def row_of(self, path) -> int | None:
        if not hasattr(self, "_rows"):
            self._rows = {v["path"]: i for i, v in enumerate(self.videos)}
        return self._rows.get(str(Path(path).resolve()))

    def search(
        self,
        query: str,
        k: int = 10,
        candidates: int = 100,
        rerank: str | None = "cliprerank",
        alpha: float = 0.4,
    ) -> list[Hit]:
        """Two-stage search: ANN over pooled vectors (top ``candidates``), then ``rerank``
        ("none", "cliprerank", an aggregator name such as "query_scored", or a checkpoint path)
        from stored frame features. Returns up to ``k`` ``Hit``s, best first."""
        from video_retrieval.search import search_index

        return search_index(self, query, k=k, candidates=candidates, rerank=rerank, alpha=alpha)
