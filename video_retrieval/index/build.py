"""Batch video indexing runs: plan, encode (``pipeline``: reader -> mapper -> writer), finalize;
resumable, incremental, distributable (``distributed``). Options and models: ``config``; the
files on disk: ``files``; repairing a damaged index: ``repair``.

``run_indexing`` plans the run from the journal (new files are encoded; unchanged files, same
size+mtime or same content hash, are skipped; changed files re-encoded; files gone from disk are
dropped with ``prune``), encodes, then rebuilds ``videos.json``/``pooled.npy``/``ann.faiss`` from
the live shards. With ``devices > 1`` encoding runs under Lightning ``trainer.predict`` (strategy
ddp, CPU/gloo) with a ``BasePredictionWriter`` writing one shard set per rank; Lightning relaunches
the running script for the other ranks, which read the plan the first process wrote.

Example::

    >>> from video_retrieval.index.build import run_indexing
    >>> from video_retrieval.index.config import IndexConfig
    >>> summary = run_indexing(["videos/"], "my_index", IndexConfig(fps=1.0))  # doctest: +SKIP
    >>> summary["videos"], summary["failed"]                                   # doctest: +SKIP
    (42, [{'path': '/abs/videos/broken.mp4', 'reason': 'no video stream'}])
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.index import files as store
from video_retrieval.index.checksums import digest_bytes, digest_file, mismatch, npy_bytes
from video_retrieval.index.config import (
    IndexConfig,
    load_models,
    make_fingerprint,
    mismatch_error,
    reuse_index_settings,
    with_checkpoint_sampling,
)
from video_retrieval.index.pipeline import (
    BatchingEncoder,
    ShardWriter,
    failure_reason,
    make_loader,
)
from video_retrieval.index.rerank import uniform_indices
from video_retrieval.media.atomic import atomic_write_bytes, atomic_write_json
from video_retrieval.media.files import FileSignature, content_hash, find_videos
from video_retrieval.models.weights import (
    manifest_weights,
    warn_if_random,
)


def make_plan(paths: list[Path], state: store.IndexState, prune: bool):
    """-> (items to encode, events to commit first, counts)."""
    todo, events = [], []
    counts = {"new": 0, "changed": 0, "unchanged": 0, "pruned": 0, "missing": 0}
    given = set()
    for p in paths:
        path = str(p)
        given.add(path)
        try:
            sig = FileSignature.of(p)
        except OSError as exc:
            events.append(
                {
                    "event": "fail",
                    "path": path,
                    "reason": failure_reason(exc),
                    "size": None,
                    "mtime_ns": None,
                    "sha256": None,
                }
            )
            continue
        known = state.videos.get(path) or state.failures.get(path)
        item = {"path": path, "size": sig.size, "mtime_ns": sig.mtime_ns, "sha256": None}
        if known is None:
            counts["new"] += 1
            todo.append(item)
            continue
        if known.get("size") == sig.size and known.get("mtime_ns") == sig.mtime_ns:
            counts["unchanged"] += 1
            continue
        digest = content_hash(p)
        if digest == known.get("sha256"):
            counts["unchanged"] += 1
            events.append(
                {"event": "touch", "path": path, "size": sig.size, "mtime_ns": sig.mtime_ns}
            )
            continue
        counts["changed"] += 1
        item["sha256"] = digest
        todo.append(item)
    for path in sorted(set(state.videos) | set(state.failures)):
        if path in given or os.path.exists(path):
            continue
        if prune:
            events.append({"event": "drop", "path": path})
            counts["pruned"] += 1
        elif path in state.videos:
            counts["missing"] += 1
    return todo, events, counts


@torch.no_grad()
def pool_videos(aggregator, frames: list[np.ndarray], group: int = 256) -> np.ndarray:
    """Pooled, L2-normalised video vectors [N,D] from per-video frame embeddings."""
    from video_retrieval.temporal.features import VideoFeatures

    if not frames:
        return np.zeros((0, 0), np.float32)
    limit = None if aggregator.name == "mean" else int(getattr(aggregator, "max_frames", 12))
    out = []
    for s in range(0, len(frames), group):
        chunk = [np.asarray(f, np.float32) for f in frames[s : s + group]]
        if limit:
            chunk = [f[uniform_indices(len(f), limit)] for f in chunk]
        t = max(len(f) for f in chunk)
        x = np.zeros((len(chunk), t, chunk[0].shape[1]), np.float32)
        mask = np.zeros((len(chunk), t), bool)
        for i, f in enumerate(chunk):
            x[i, : len(f)] = f
            x[i, len(f) :] = f[-1]
            mask[i, : len(f)] = True
        v = aggregator.embed_video(VideoFeatures(torch.from_numpy(x), torch.from_numpy(mask)))
        v = v.float()
        out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def ann_options(cfg: IndexConfig, encoder=None, aggregator=None, manifest: dict | None = None):
    """``ann.AnnOptions`` of a run: the kind and target given, else those the index was built
    with (``manifest``), else auto / 0.95. With the models, ``recall_captions`` are encoded as
    text queries for the recall measurement (without, the file is only checked)."""
    from video_retrieval.index.ann import describe, parse_memory
    from video_retrieval.index.ann_recall import DEFAULT_TARGET_RECALL, AnnOptions

    before = describe((manifest or {}).get("ann")) if manifest and manifest.get("ann") else {}
    target = cfg.target_recall
    if target is None:
        target = before.get("target_recall", DEFAULT_TARGET_RECALL)
    opts = AnnOptions(
        kind=cfg.ann or before.get("requested") or "auto",
        target_recall=float(target),
        max_memory=parse_memory(cfg.max_memory),
        sample=int(cfg.recall_sample),
    )
    opts.check()
    if cfg.recall_captions and encoder is None:
        from video_retrieval.index.queries import read_query_file

        read_query_file(cfg.recall_captions, "--recall-captions")
    elif cfg.recall_captions:
        opts.text_queries = encode_recall_captions(
            encoder, aggregator, cfg.recall_captions, opts.sample
        )
    return opts


@torch.no_grad()
def encode_recall_captions(encoder, aggregator, path, limit: int) -> np.ndarray:
    """Sentence embeddings [Q,D] of (at most ``limit``, evenly spread) captions of ``path``."""
    from video_retrieval.index.queries import encode_queries, read_query_file

    texts = [t for _, t in read_query_file(path, "--recall-captions")]
    if len(texts) > limit:
        texts = [texts[i] for i in uniform_indices(len(texts), limit)]
    return np.stack([q.embedding for q in encode_queries(encoder, aggregator, texts)])


def finalize(
    index_dir, state: store.IndexState, aggregator, manifest: dict, ann_kind="auto"
) -> dict:
    """Write a new generation of videos/pooled/ann from the live shards, then switch the
    manifest to it (readers see the old generation until that one rename); returns the new
    manifest. ``ann_kind``: a kind name or ``ann.AnnOptions`` (recall measured and tuned,
    ``ann.build_measured``)."""
    from video_retrieval.index.ann import save_ann
    from video_retrieval.index.ann_recall import AnnOptions, build_measured

    index_dir = Path(index_dir)
    paths = sorted(state.videos)
    metas: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    videos, frames = [], []
    for path in paths:
        e = state.videos[path]
        sh = e["shard"]
        if sh not in metas:
            for name, record in state.shard_files.get(sh, {}).items():  # sizes (hash: --verify)
                why = mismatch(store.shard_path(index_dir, name), record, full=False)
                if why:
                    raise store.IndexDamaged(index_dir, store.shard_path(index_dir, name), why)
            metas[sh] = {v["path"]: v for v in store.load_shard_meta(index_dir, sh)["videos"]}
            arrays[sh] = store.load_shard_frames(index_dir, sh)
        m = metas[sh].get(path)
        if m is None or arrays[sh].shape[0] < m["offset"] + m["length"]:
            raise store.IndexDamaged(
                index_dir, store.shard_path(index_dir, sh, ".json"), f"does not hold {path}"
            )
        videos.append({**{k: m[k] for k in m}, "shard": sh})
        frames.append(arrays[sh][m["offset"] : m["offset"] + m["length"]])
    dim = int(manifest["embed_dim"])
    pooled = pool_videos(aggregator, frames) if frames else np.zeros((0, dim), np.float32)
    gen = store.next_generation(manifest)
    files = store.generation_files(gen)
    written = {}  # the generation's files and their checksums, as written

    def write(key: str, data: bytes) -> None:
        atomic_write_bytes(index_dir / files[key], data)
        written[files[key]] = digest_bytes(data)

    write("pooled", npy_bytes(pooled))
    write("videos", (json.dumps(videos, indent=1, sort_keys=True) + "\n").encode())
    shard_files = {n: r for sh in metas for n, r in state.shard_files.get(sh, {}).items()}
    write(
        "checksums", (json.dumps({"shards": shard_files}, indent=1, sort_keys=True) + "\n").encode()
    )
    opts = ann_kind if isinstance(ann_kind, AnnOptions) else AnnOptions(kind=ann_kind or "auto")
    ann, ann_info = build_measured(
        pooled, opts, log=lambda line: print(f"warning: {line}", file=sys.stderr)
    )
    save_ann(ann, index_dir / files["ann"])
    written[files["ann"]] = digest_file(index_dir / files["ann"])
    fail_lines = "".join(
        json.dumps({"path": p, "reason": f.get("reason", "")}, sort_keys=True) + "\n"
        for p, f in sorted(state.failures.items())
    )
    atomic_write_bytes(index_dir / store.FAILURES, fail_lines.encode())
    manifest = {
        **manifest,
        "format_version": store.FORMAT_VERSION,
        "generation": gen,
        "files": files,
        "counts": {
            "videos": len(videos),
            "frames": int(sum(v["length"] for v in videos)),
            "shards": len(metas),
            "failures": len(state.failures),
        },
        "ann": ann_info,
        "checksums": written,
        "complete": True,
    }
    atomic_write_json(index_dir / store.MANIFEST, manifest)  # the switch
    store.remove_stale_generations(index_dir, manifest)
    return manifest


def encode_local(
    items, cfg: IndexConfig, encoder, index_dir, run: int, progress: bool, sink=None
) -> ShardWriter:
    writer = ShardWriter(index_dir, run, 0, cfg.shard_size, cfg.shard_frames, sink)
    if not items:
        return writer
    loader = make_loader(items, cfg.sampling(), getattr(encoder, "image_size", None), cfg.workers)
    be = BatchingEncoder(encoder, cfg.batch_size, cfg.patches)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(items), unit="video", desc=f"indexing [{encoder.device}]", file=sys.stderr
        )
    t0 = time.perf_counter()

    def emit(done):
        for item, emb, patches in done:
            writer.add(item, emb, patches)
        if bar is not None and done:
            bar.update(len(done))
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(frames_s=f"{be.frames_encoded / dt:.1f}", device=str(encoder.device))

    for item in loader:
        if "error" in item:
            writer.fail(item, item["error"])
            if bar is not None:
                bar.update(1)
            continue
        emit(be.add(item))
    emit(be.flush())
    writer.flush()
    if bar is not None:
        bar.close()
    return writer


def _prepare_folder(index_dir: Path) -> bool:
    """Create the index folder if needed; True when this run created it."""
    if index_dir.exists() and not index_dir.is_dir():
        raise UserError(f"--index {index_dir} exists and is not a folder")
    created = not index_dir.exists()
    index_dir.mkdir(parents=True, exist_ok=True)
    return created


def _check_fresh_folder(index_dir: Path) -> None:
    own = {store.LOCK}
    if any(p.name not in own and not p.name.startswith(".") for p in index_dir.iterdir()):
        raise UserError(f"--index {index_dir} is a non-empty folder that is not an index")


def _has_committed_shards(index_dir) -> bool:
    return any(e.get("event") == "shard" for e in store.read_events(index_dir))


def run_indexing(inputs, index_dir, cfg: IndexConfig | None = None) -> dict | None:
    """Index ``inputs`` into ``index_dir``; returns the run summary (None on DDP ranks > 0).

    A run holds the index's writer lock from start to end. A failed first run removes the
    folder it created (unless it committed encoded shards: those are resumed by a rerun).
    """
    from video_retrieval.index import distributed as ddp

    cfg = (cfg or IndexConfig()).check()
    ddp.check_launch(cfg)
    if ddp.launch_rank(cfg) > 0:  # a DDP worker: never takes the lock, rank 0 plans and reports
        ddp.run_worker(replace(cfg))
        return None
    cfg.sampling()  # validate early
    ann_options(cfg)
    paths = find_videos(inputs)
    index_dir = Path(index_dir).expanduser().resolve()
    created = _prepare_folder(index_dir)
    try:
        with store.IndexLock(index_dir, wait=cfg.wait):
            return _run_locked(paths, index_dir, cfg)
    except BaseException:
        if created and not _has_committed_shards(index_dir):
            import shutil

            shutil.rmtree(index_dir, ignore_errors=True)
        raise


def _open_for_writing(index_dir: Path, cfg: IndexConfig):
    """Models, resolved config, fingerprint and manifest of a run (the manifest is written for
    a new index, and checked against the run's settings for an existing one)."""
    from video_retrieval.index import milvus_write

    store.clean_temp_files(index_dir)
    manifest = store.read_manifest(index_dir)
    cfg = milvus_write.resolve_store(index_dir, cfg, manifest)
    if cfg.store == "milvus":
        from video_retrieval.index.milvus_ann import check_kind

        check_kind(cfg.ann)
    if manifest is not None:
        cfg = reuse_index_settings(cfg, manifest)
    cfg = replace(cfg, patches=int(cfg.patches or 0))
    encoder, pool_agg, model_info, agg_label, own = load_models(cfg)
    cfg = with_checkpoint_sampling(cfg, own)
    fp = make_fingerprint(encoder, cfg, agg_label)
    if manifest is not None:
        diff = store.fingerprint_mismatch(manifest["fingerprint"], fp)
        if diff:
            raise mismatch_error(index_dir, manifest, diff)
        if cfg.store == "milvus":  # its collections checked (and a new --milvus-uri taken)
            manifest["store"] = milvus_write.open_store(index_dir, cfg, manifest, encoder.embed_dim)
    else:
        _check_fresh_folder(index_dir)
        manifest = {
            "format_version": store.FORMAT_VERSION,
            "fingerprint": fp,
            "model": model_info,
            "embed_dim": int(encoder.embed_dim),
            "counts": {"videos": 0, "frames": 0, "shards": 0, "failures": 0},
            "complete": False,
        }
        if cfg.store == "milvus":  # the collections exist before any shard is inserted
            manifest["store"] = milvus_write.open_store(index_dir, cfg, manifest, encoder.embed_dim)
        atomic_write_json(index_dir / store.MANIFEST, manifest)
    warn_if_random(manifest_weights(manifest))
    return encoder, pool_agg, cfg, manifest


def _check_journal(index_dir: Path, manifest: dict, state: store.IndexState) -> None:
    """Refuse to update an index whose journal does not account for the videos its current
    generation serves (the journal was deleted or cut short): a run would take their shards
    for leftovers of killed runs. ``--repair`` recovers them from every other source."""
    files = store.manifest_files(manifest)
    if not files or not manifest.get("complete"):
        return
    try:
        videos = store.read_json(index_dir / files["videos"])
    except (OSError, ValueError):
        return  # a damaged generation: this run writes a new one from the journal
    known = set(state.videos) | state.dropped | set(state.failures)
    missing = [v.get("path") for v in videos if isinstance(v, dict) and v.get("path") not in known]
    if missing:
        raise UserError(
            f"index {index_dir}: its journal does not record {len(missing)} of its indexed "
            f"videos (journal/ damaged or deleted); run vr index --index {index_dir} --repair "
            "first: it recovers them from the other files, deleting nothing"
        )


def _run_locked(paths: list[Path], index_dir: Path, cfg: IndexConfig) -> dict:
    t_start = time.perf_counter()
    encoder, pool_agg, cfg, manifest = _open_for_writing(index_dir, cfg)
    ann_opts = ann_options(cfg, encoder, pool_agg, manifest)
    state = store.replay(index_dir)
    _check_journal(index_dir, manifest, state)
    todo, events, counts = make_plan(paths, state, cfg.prune)
    store.remove_orphans(index_dir, state, keep=store.referenced_shards(index_dir, manifest))
    run = store.next_run_id(index_dir)
    config_event = {
        "event": "config",
        "fingerprint": manifest["fingerprint"],
        "model": manifest["model"],
        "embed_dim": manifest["embed_dim"],
    }
    if manifest.get("store"):  # so that --repair finds the vectors without the manifest
        config_event["store"] = manifest["store"]
    store.Journal(index_dir, run, 0).append(config_event, *events)
    sink = None
    if cfg.store == "milvus":
        from video_retrieval.index import milvus_write

        sink = milvus_write.make_sink(cfg, index_dir, manifest["store"])
        milvus_write.clean_killed_runs(sink.calls, manifest["store"], state, run)

    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    t_enc = time.perf_counter()
    from video_retrieval.index import distributed as ddp

    # Lightning starts the processes of one machine itself (no more than videos); a launch
    # from outside (several nodes, torchrun, srun) has its world size fixed
    devices = cfg.devices if ddp.externally_launched(cfg) else min(cfg.devices, len(todo))
    if devices > 1 or cfg.num_nodes > 1:
        conf = {**asdict(cfg), "devices": devices, "progress": False}
        plan = {
            "items": todo,
            "config": conf,
            "index_dir": str(index_dir),
            "run": run,
            "image_size": getattr(encoder, "image_size", None),
            "milvus": manifest.get("store") if cfg.store == "milvus" else None,
        }
        ddp.predict_distributed(plan, IndexConfig(**conf), encoder)
    else:
        encode_local(todo, cfg, encoder, index_dir, run, progress, sink)
    enc_seconds = time.perf_counter() - t_enc

    state = store.replay(index_dir)
    new_paths = {it["path"] for it in todo}
    encoded_now = [
        v
        for p, v in state.videos.items()
        if p in new_paths and v["shard"].startswith(f"{run:05d}-")
    ]
    frames_now = int(sum(v["length"] for v in encoded_now))
    if cfg.store == "milvus":
        manifest = milvus_write.finalize(
            index_dir, state, pool_agg, manifest, ann_opts, pool_videos, cfg.milvus_token, run
        )
    else:
        manifest = finalize(index_dir, state, pool_agg, manifest, ann_opts)
    store.remove_orphans(index_dir, state, keep=store.referenced_shards(index_dir, manifest))
    given = {str(p) for p in paths}
    failed = [
        {"path": p, "reason": f.get("reason", "")}
        for p, f in sorted(state.failures.items())
        if p in given
    ]
    seconds = time.perf_counter() - t_start
    return {
        "index": str(index_dir),
        "found": len(paths),
        **counts,
        "encoded": len(encoded_now),
        "frames_encoded": frames_now,
        "failed": failed,
        "videos": manifest["counts"]["videos"],
        "frames": manifest["counts"]["frames"],
        "ann": manifest["ann"],
        "store": store.store_summary(manifest),
        "weights": manifest_weights(manifest),
        "sampling": manifest["fingerprint"]["sampling"],
        "device": str(encoder.device),
        "autocast": str(encoder.autocast_dtype).replace("torch.", "")
        if encoder.autocast_dtype
        else "fp32",
        "devices": max(devices, 1),
        "num_nodes": cfg.num_nodes,
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(encoded_now) / enc_seconds, 3) if enc_seconds > 0 else 0.0,
        "frames_per_s": round(frames_now / enc_seconds, 3) if enc_seconds > 0 else 0.0,
    }
