"""Writing an index's vectors into Milvus (``vr index --store milvus``): the collections, the
shard sink every encoding rank inserts its frames through, clean-up of killed runs, and the
finalize step that publishes a new generation.

The index folder keeps what a FAISS index keeps except the vectors: the manifest, the journal,
each shard's small ``.json`` (its videos, their keys and timestamps) and each generation's
``videos.<gen>.json``. Frames go into Milvus as each shard is written (from every rank, so nodes
need no shared filesystem for vectors), and a run commits a shard with its journal line only
after Milvus took its frames; pooled vectors are inserted by ``finalize`` for the videos the
generation adds, so an unchanged video is never pooled or inserted again.

A generation is published in this order: undo what a killed finalize left (rows of a
generation never published), insert the added videos' rows (``gen`` = the new generation),
mark the removed ones (``dead`` = the new generation), tune the Milvus index by measured recall
(``milvus_ann``), write ``videos.<gen>.json`` and switch the manifest (one rename), then delete
the rows removed two generations ago and their frames. Readers of the generation before keep
seeing exactly their rows until then (``milvus.generation_filter``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError
from video_retrieval.index import files as store
from video_retrieval.index.checksums import digest_bytes
from video_retrieval.index.milvus import (
    DEFAULT_DB,
    INDEX_PROPERTY,
    INSERT_BATCH,
    PATH_MAX,
    Calls,
    Target,
    check_collection_name,
    check_collections,
    check_uri,
    connect,
    default_collection,
    generation_filter,
    ids_filter,
    is_lite,
    pymilvus,
    rank_range,
    shard_base,
    video_key,
)
from video_retrieval.index.milvus_read import get_vectors
from video_retrieval.media.atomic import atomic_write_bytes, atomic_write_json

PARTS = ("videos", "frames", "patches")


# -- which store, where ------------------------------------------------------------------------
def resolve_store(index_dir: Path, cfg, manifest: dict | None):
    """``cfg`` with ``store``, ``milvus_uri`` and ``milvus_collection`` resolved: the index's own
    for an existing index (a different --store or --milvus-collection refused; a new
    --milvus-uri taken: the collections moved), the flags or defaults for a new one."""
    from dataclasses import replace

    own = ((manifest or {}).get("store") or {}).get("kind", "faiss") if manifest else None
    asked = cfg.store or ("milvus" if (cfg.milvus_uri or cfg.milvus_collection) else None)
    if own is not None and asked is not None and asked != own:
        raise UserError(
            f"index {index_dir} keeps its vectors in {own}, not {asked}: drop --store/--milvus-* "
            "or build a new index with another --index"
        )
    kind = own or asked or "faiss"
    if kind != "milvus":
        return replace(cfg, store="faiss")
    if own == "milvus":
        target = Target.of_manifest(index_dir, manifest)
        if cfg.milvus_collection and cfg.milvus_collection != target.collection:
            raise UserError(
                f"index {index_dir} keeps its vectors in collection {target.collection}, not "
                f"{cfg.milvus_collection}: drop --milvus-collection"
            )
        uri = check_uri(cfg.milvus_uri) if cfg.milvus_uri else target.resolved_uri
        collection = target.collection
    else:
        uri = check_uri(cfg.milvus_uri) if cfg.milvus_uri else str(index_dir / DEFAULT_DB)
        collection = check_collection_name(cfg.milvus_collection or default_collection(index_dir))
    if is_lite(uri):
        uri = str(Path(uri).expanduser().resolve())
        if cfg.devices > 1 or cfg.num_nodes > 1:
            raise UserError(
                "Milvus Lite serves one process, so --devices/--num-nodes > 1 needs a Milvus "
                "server: --milvus-uri http://host:19530"
            )
    return replace(cfg, store="milvus", milvus_uri=uri, milvus_collection=collection)


def target_of(cfg, index_dir) -> Target:
    return Target(cfg.milvus_uri, cfg.milvus_collection, Path(index_dir))


# -- collections ---------------------------------------------------------------------------------
def _schema(pm, part: str, dim: int):
    DataType = pm.DataType
    s = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    if part == "videos":
        s.add_field("gen", DataType.INT64)
        s.add_field("dead", DataType.INT64)
        s.add_field("length", DataType.INT64)
        s.add_field("duration", DataType.DOUBLE)
        s.add_field("path", DataType.VARCHAR, max_length=PATH_MAX)
        s.add_field("signature", DataType.VARCHAR, max_length=128)
    else:
        s.add_field("video", DataType.INT64)
        if part == "frames":
            s.add_field("t", DataType.INT64)
            s.add_field("time", DataType.DOUBLE)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    return s


def open_store(index_dir: Path, cfg, manifest: dict, dim: int) -> dict:
    """The manifest's ``store`` entry for a run: a new index's collections created (refusing
    names that hold another index's rows), an existing index's checked; the URI as recorded."""
    target = target_of(cfg, index_dir)
    calls = Calls(connect(target, cfg.milvus_token, create=True), target)
    patches = int(cfg.patches or 0)
    old = manifest.get("store")
    if old:
        entry = {**old, "uri": target.recorded_uri}
        check_collections(calls, {**manifest, "store": entry}, dim)
        return entry
    names = {p: target.name(p) for p in PARTS}
    if not patches:
        names["patches"] = None
    for name in filter(None, names.values()):
        if calls("has_collection", name):
            rows = calls("get_collection_stats", name).get("row_count", 0)
            raise UserError(
                f"{target.shown()} already has a collection {name} ({rows} rows); choose "
                "another --milvus-collection (or drop that collection)"
            )
    entry = {"kind": "milvus", "uri": target.recorded_uri, "collection": target.collection,
             "collections": names, "index_id": uuid.uuid4().hex, "clean_below_run": 0}  # fmt: skip
    for part, name in names.items():
        if name:
            _create(calls, part, name, dim * (patches if part == "patches" else 1), entry)
    return entry


def _create(calls: Calls, part: str, name: str, width: int, entry: dict) -> None:
    params = calls("prepare_index_params")
    params.add_index("vector", index_type="FLAT", metric_type="COSINE")
    if part != "videos":  # a video's rows are found by key; the index serves deletes
        params.add_index("video", index_type="INVERTED")
    props = {INDEX_PROPERTY: entry["index_id"]}
    if part != "videos":  # read a few at a time: a server may keep them on disk
        props["mmap.enabled"] = "true"
    calls("create_collection", name, schema=_schema(pymilvus(), part, width),
          index_params=params, properties=props)  # fmt: skip


# -- repair --------------------------------------------------------------------------------------
def restore_collections(index_dir: Path, cfg, manifest: dict, report) -> dict:
    """``--repair``: create the index's collections Milvus lost (empty: what they held is
    recovered or re-encoded by the repair), check the others; returns the store entry."""
    target = target_of(cfg, index_dir)
    calls = Calls(connect(target, cfg.milvus_token, create=True), target)
    entry = {**manifest["store"], "uri": target.recorded_uri}
    dim = int(manifest["embed_dim"])
    topk = int((manifest["fingerprint"].get("patches") or {}).get("topk", 0))
    present = {}
    for part, name in entry["collections"].items():
        if not name:
            continue
        if calls("has_collection", name):
            present[part] = name
            continue
        _create(calls, part, name, dim * (topk if part == "patches" else 1), entry)
        report.rebuilt.append(f"Milvus collection {name}")
    check_collections(calls, {**manifest, "store": entry}, dim)
    return entry


class MilvusShards:
    """``repair.Shards`` for frames in Milvus: which frame (and patch) rows of each shard Milvus
    holds; a video is recovered when it holds all of the video's."""

    def __init__(self, calls: Calls, entry: dict, patches: bool):
        self.calls, self.entry, self.patches = calls, entry, patches
        self.records: dict = {}
        self.held: dict[str, set[int]] = {}

    def check(self, name: str) -> str | None:
        if name not in self.held:
            base = shard_base(name)
            held = None
            for part in ("frames", "patches") if self.patches else ("frames",):
                ids = _ids(self.calls, self.entry["collections"][part],
                           ids_filter([(base, base + (1 << 20))]))  # fmt: skip
                rows = {k - base for k in ids}
                held = rows if held is None else held & rows
            self.held[name] = held
        return None if self.held[name] else f"{self.calls.target.shown()} holds none of its frames"

    def holds(self, entry: dict) -> bool:
        rows = self.held[entry["shard"]]
        return all(r in rows for r in range(int(entry["offset"]),
                                            int(entry["offset"]) + int(entry["length"])))  # fmt: skip


# -- the shard sink ------------------------------------------------------------------------------
def _text(path: str, limit: int = PATH_MAX) -> str:
    """A path as valid UTF-8 text for a VARCHAR (undecodable bytes as \\x escapes)."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.encode()[:limit].decode("utf-8", "ignore")


def insert_rows(calls: Calls, collection: str, rows: list[dict]) -> None:
    for s in range(0, len(rows), INSERT_BATCH):
        calls("insert", collection, rows[s : s + INSERT_BATCH])


class MilvusSink:
    """``ShardWriter``'s sink for ``--store milvus``: gives each video its key, inserts the
    shard's frames (and patch tokens) into Milvus, then writes the shard's ``.json`` locally;
    the writer's journal line, written after, commits it."""

    def __init__(self, target: Target, names: dict, token: str | None = None):
        self.target, self.names, self.token = target, names, token
        self._calls = None

    @property
    def calls(self) -> Calls:
        if self._calls is None:  # in each DDP rank: its own connection
            self._calls = Calls(connect(self.target, self.token), self.target)
        return self._calls

    def __call__(self, index_dir, name: str, frames, videos: list[dict], patches=None) -> dict:
        emb = np.asarray(frames, dtype=np.float16).astype(np.float32)  # what a FAISS shard holds
        rows, prow = [], []
        for v in videos:
            key = video_key(name, v["offset"], v["length"])
            v["milvus_id"] = key
            for t in range(v["length"]):
                r = v["offset"] + t
                rows.append({"id": key + t, "video": key, "t": t,
                             "time": float(v["timestamps"][t]), "vector": emb[r]})  # fmt: skip
                if patches is not None:
                    flat = np.asarray(patches[r], dtype=np.float16).astype(np.float32).reshape(-1)
                    prow.append({"id": key + t, "video": key, "vector": flat})
        insert_rows(self.calls, self.names["frames"], rows)
        if prow:
            insert_rows(self.calls, self.names["patches"], prow)
        meta = {"shard": name, "store": "milvus", "videos": videos}
        data = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
        path = store.shard_path(index_dir, name, ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return {f"{name}.json": digest_bytes(data)}


def make_sink(cfg, index_dir, manifest_store: dict) -> MilvusSink:
    return MilvusSink(target_of(cfg, index_dir), manifest_store["collections"], cfg.milvus_token)


# -- clean-up ------------------------------------------------------------------------------------
def clean_killed_runs(calls: Calls, entry: dict, state: store.IndexState, run: int) -> None:
    """Delete the frames of shards that runs before ``run`` inserted but never committed (the
    run was killed between Milvus taking them and the journal line): per rank, every key from
    the shard after its last committed one. Runs below ``clean_below_run`` are clean."""
    committed: dict[tuple[int, int], int] = {}
    for sh in state.shards:
        r, rank, seq = (int(x) for x in sh.split("-"))
        committed[(r, rank)] = max(committed.get((r, rank), -1), seq)
    ranges = []
    for r in range(int(entry.get("clean_below_run", 0)), run):
        for rank in range(1 << 8):
            ranges.append(rank_range(r, rank, committed.get((r, rank), -1) + 1))
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    for part in ("frames", "patches"):
        name = entry["collections"].get(part)
        if name and merged:
            for s in range(0, len(merged), 64):
                calls("delete", name, filter=ids_filter([tuple(m) for m in merged[s : s + 64]]))


def _ids(calls: Calls, collection: str, expr: str) -> list[int]:
    """Primary keys of the rows matching ``expr`` (every one: an iterator)."""
    it = calls("query_iterator", collection, batch_size=4096, filter=expr, output_fields=["id"])
    out = []
    try:
        while batch := it.next():
            out.extend(int(r["id"]) for r in batch)
    finally:
        it.close()
    return out


def _delete_videos(calls: Calls, names: dict, keys: list[int]) -> None:
    """Delete these videos' rows, frames and patch tokens."""
    for s in range(0, len(keys), 1000):
        chunk = keys[s : s + 1000]
        for part in ("frames", "patches"):
            if names.get(part):
                calls("delete", names[part], filter=f"video in {chunk}")
        calls("delete", names["videos"], ids=chunk)


# -- publishing a generation ---------------------------------------------------------------------
def video_row(entry: dict, vector: np.ndarray, gen: int) -> dict:
    return {"id": int(entry["milvus_id"]), "gen": gen, "dead": 0,
            "length": int(entry["length"]), "duration": float(entry.get("duration") or 0.0),
            "path": _text(entry["path"]), "signature": str(entry.get("sha256") or "")[:128],
            "vector": np.asarray(vector, np.float32)}  # fmt: skip


def read_frames(calls: Calls, name: str, entries: list[dict]) -> list[np.ndarray]:
    """The frames [T,D] of these videos from Milvus; ``IndexDamaged`` when Milvus lacks some."""
    ids = [int(e["milvus_id"]) + t for e in entries for t in range(int(e["length"]))]
    got = get_vectors(calls, name, ids)
    out = []
    for e in entries:
        key, n = int(e["milvus_id"]), int(e["length"])
        if any(key + t not in got for t in range(n)):
            raise store.IndexDamaged(
                calls.target.index_dir, calls.target.index_dir / "journal",
                f"commits frames of {e['path']} that {calls.target.shown()} does not hold",
            )  # fmt: skip
        out.append(np.array([got[key + t]["vector"] for t in range(n)], dtype=np.float32))
    return out


def finalize(
    index_dir, state, aggregator, manifest: dict, ann_opts, pool, token=None, run: int = -1
) -> dict:
    """Publish a new generation of a Milvus index from the journal's live videos (module
    docstring); returns the new manifest. ``pool(aggregator, frames)`` pools frames; ``run``:
    the run that ends with it (it and the runs before it leave nothing to clean)."""
    from video_retrieval.index.milvus_ann import tune

    index_dir = Path(index_dir)
    entry = manifest["store"]
    target = Target.of_manifest(index_dir, manifest)
    calls = Calls(connect(target, token), target)
    names = entry["collections"]
    gen = int(manifest.get("generation", 0))
    new_gen = gen + 1
    # 1. what a killed finalize left: rows of a generation never published, removal marks
    calls("delete", names["videos"], filter=f"gen > {gen}")
    for key in _ids(calls, names["videos"], f"dead > {gen}"):
        calls("upsert", names["videos"], [{"id": key, "dead": 0}], partial_update=True)
    live = set(_ids(calls, names["videos"], generation_filter(gen)))
    videos = [{**state.videos[p]} for p in sorted(state.videos)]
    keys = {int(v["milvus_id"]) for v in videos}
    added = [v for v in videos if int(v["milvus_id"]) not in live]
    removed = sorted(live - keys)
    # 2. the added videos: pooled from their frames in Milvus, in groups (bounded memory)
    dim = int(manifest["embed_dim"])
    for s in range(0, len(added), 256):
        group = added[s : s + 256]
        pooled = pool(aggregator, read_frames(calls, names["frames"], group))
        insert_rows(calls, names["videos"],
                    [video_row(e, pooled[i], new_gen) for i, e in enumerate(group)])  # fmt: skip
    # 3. the removed ones: invisible from the new generation on
    for s in range(0, len(removed), 1000):
        calls("upsert", names["videos"], [{"id": k, "dead": new_gen} for k in
                                          removed[s : s + 1000]], partial_update=True)  # fmt: skip
    calls("flush", names["videos"])
    ann_info = tune(calls, names["videos"], new_gen, len(videos), dim, ann_opts,
                    log=lambda line: print(f"warning: {line}", file=sys.stderr),
                    before=manifest.get("ann"))  # fmt: skip
    # 4. the generation's metadata, then the switch
    files = {
        k: v for k, v in store.generation_files(new_gen).items() if k in ("videos", "checksums")
    }
    written = {}
    data = (json.dumps(videos, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(index_dir / files["videos"], data)
    written[files["videos"]] = digest_bytes(data)
    shards = {v["shard"] for v in videos}
    records = {n: r for sh in shards for n, r in state.shard_files.get(sh, {}).items()}
    data = (json.dumps({"shards": records}, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(index_dir / files["checksums"], data)
    written[files["checksums"]] = digest_bytes(data)
    fail_lines = "".join(
        json.dumps({"path": p, "reason": f.get("reason", "")}, sort_keys=True) + "\n"
        for p, f in sorted(state.failures.items())
    )
    atomic_write_bytes(index_dir / store.FAILURES, fail_lines.encode())
    last_run = max([run, *(int(sh.split("-")[0]) for sh in state.shards)])
    manifest = {
        **manifest,
        "format_version": store.FORMAT_VERSION,
        "generation": new_gen,
        "files": files,
        "store": {
            **entry,
            "clean_below_run": max(int(entry.get("clean_below_run", 0)), last_run + 1),
        },  # fmt: skip
        "counts": {
            "videos": len(videos),
            "frames": int(sum(int(v["length"]) for v in videos)),
            "shards": len(shards),
            "failures": len(state.failures),
        },
        "ann": ann_info,
        "checksums": written,
        "complete": True,
    }
    if os.environ.pop("VR_TEST_PAUSE_BEFORE_SWITCH", None):  # the reader test stops here once
        os.kill(os.getpid(), signal.SIGSTOP)
    atomic_write_json(index_dir / store.MANIFEST, manifest)  # the switch
    # 5. rows removed two generations ago (no reader of a kept generation sees them)
    stale = _ids(calls, names["videos"], f"dead > 0 and dead <= {gen}")
    _delete_videos(calls, names, stale)
    store.remove_stale_generations(index_dir, manifest)
    return manifest
