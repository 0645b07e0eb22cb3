"""Batch video indexing: reader -> encoder -> writer, resumable, incremental, distributable.

* **reader** (``VideoReader``, a map-style ``Dataset``): in DataLoader workers, decodes and samples
  the frames of one video (``decode.load_frames`` at the encoder's input size), hashes the file,
  returns uint8 frames + timestamps, or the reason it failed. Decoding overlaps with encoding.
* **mapper** (``BatchingEncoder``): in the main process, preprocesses (batched tensor ops) and
  encodes frames in batches of ``batch_size`` frames across video boundaries.
* **writer** (``ShardWriter``): accumulates per-video frame embeddings into fp16 shards, writes each
  shard atomically, then commits it with a journal line (``index_files``).

``run_indexing`` plans the run from the journal (new files are encoded; unchanged files, same
size+mtime or same content hash, are skipped; changed files re-encoded; files gone from disk are
dropped with ``prune``), encodes, then rebuilds ``videos.json``/``pooled.npy``/``ann.faiss`` from
the live shards. With ``devices > 1`` encoding runs under Lightning ``trainer.predict`` (strategy
ddp, CPU/gloo) with a ``BasePredictionWriter`` writing one shard set per rank; Lightning relaunches
the running script for the other ranks, which read the plan the first process wrote.

Example::

    >>> from video_retrieval.indexer import IndexConfig, run_indexing
    >>> summary = run_indexing(["videos/"], "my_index", IndexConfig(fps=1.0))  # doctest: +SKIP
    >>> summary["videos"], summary["failed"]                                   # doctest: +SKIP
    (42, [{'path': '/abs/videos/broken.mp4', 'reason': 'no video stream'}])
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from video_retrieval import index_files as store
from video_retrieval.errors import UserError, VideoDecodeError
from video_retrieval.model_weights import (
    checkpoint_kind,
    describe_weights,
    manifest_weights,
    resolve_encoder_args,
    warn_if_random,
    weights_line,
)
from video_retrieval.rerank import uniform_indices
from video_retrieval.video_files import FileSignature, content_hash, find_videos

#: a decodable part shorter than the container's declared duration by more than this (one
#: 2 s moment clip) is a truncated file, reported as a failure rather than indexed as a short video
TRUNCATION_SLACK_S = 2.0


@dataclass
class IndexConfig:
    """Options of ``vr index`` / ``Index.build``.

    Model: ``model`` + ``pretrained`` (tag or file), ``checkpoint`` (a ``vr train`` retrieval
    checkpoint or CLIP weights), or ``random_weights`` (tests only); nothing given means
    ``ViT-B-32`` / ``laion2b_s34b_b79k`` for a new index and the index's own model for an
    existing one (``model_weights``). Sampling: ``fps`` or ``num_frames``; default: a
    checkpoint's own sampling, else the index's, else 1 fps.
    """

    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    random_weights: bool = False
    fps: float | None = None
    num_frames: int | None = None
    symmetric_window: bool | None = None  # sample between the first and last frame centres
    batch_size: int = 64  # frames per encoder batch
    workers: int = 0  # DataLoader workers decoding videos
    devices: int = 1  # > 1: Lightning DDP on CPU processes
    prune: bool = False
    shard_size: int = 64  # videos per shard (at most)
    shard_frames: int = 8192  # frames per shard (at most, unless one video has more)
    progress: bool | None = None  # None: a bar when stderr is a TTY
    # auto | ann.KINDS (flat, hnsw, ivf, fp16, sq8, hnsw-sq8, ivf-sq8, ivf-pq); None: the
    # index's own choice (auto for a new index)
    ann: str | None = None
    target_recall: float | None = None  # tuned to reach it, else exact (None: index's own / 0.95)
    max_memory: str | int | None = None  # --ann auto: memory budget of the ANN (None: RAM / 2)
    recall_captions: str | None = None  # captions.jsonl / text file: text queries for recall
    recall_sample: int = 1000  # held-out video vectors (and at most as many captions)
    num_nodes: int = 1  # > 1: Lightning multi-node DDP (one process per node launched each)
    precision: str = "auto"
    device: str = "cpu"
    patches: int | None = None  # K patch tokens per frame closest to CLS; None: index's own / 0
    backend: str = "open_clip"  # or "hf": a Hugging Face CLIP directory / hub id as ``model``
    wait: bool = True  # another writer holds the index: wait (False: one-line error)
    encoder_spec: dict | None = None  # set from an existing index's manifest (reuse its model)

    def model_flags_given(self) -> bool:
        return bool(
            self.model or self.pretrained or self.checkpoint or self.random_weights
            or self.backend != "open_clip" or self.encoder_spec
        )  # fmt: skip

    def sampling(self) -> dict:
        if self.fps is not None and self.num_frames is not None:
            raise UserError("give --fps or --num-frames, not both")
        if self.num_frames is not None:
            if self.num_frames < 1:
                raise UserError(f"--num-frames must be >= 1, got {self.num_frames}")
            out = {"fps": None, "num_frames": int(self.num_frames)}
        else:
            fps = 1.0 if self.fps is None else float(self.fps)
            if not fps > 0:
                raise UserError(f"--fps must be > 0, got {fps}")
            out = {"fps": fps, "num_frames": None}
        if self.symmetric_window:  # recorded only when on: older fingerprints stay equal
            out["symmetric_window"] = True
        return out


# -- models and fingerprint ---------------------------------------------------------------------
def _file_sha256(path) -> str:
    return content_hash(path)


def reuse_index_settings(cfg: IndexConfig, manifest: dict) -> IndexConfig:
    """``cfg`` with the model, sampling and patches of an existing index wherever the user gave
    none, so an incremental run needs only the inputs and ``--index``."""
    m = manifest["model"]
    kw = {}
    if not cfg.model_flags_given():
        if m.get("checkpoint"):
            kw["checkpoint"] = m["checkpoint"]
        else:
            kw["encoder_spec"] = dict(m["encoder_spec"])
    sampling = manifest["fingerprint"].get("sampling") or {}
    if cfg.fps is None and cfg.num_frames is None and cfg.symmetric_window is None:
        kw.update(
            fps=sampling.get("fps"),
            num_frames=sampling.get("num_frames"),
            symmetric_window=bool(sampling.get("symmetric_window", False)),
        )
    if cfg.patches is None:
        kw["patches"] = int((manifest["fingerprint"].get("patches") or {}).get("topk", 0))
    return replace(cfg, **kw)


def load_models(cfg: IndexConfig):
    """(encoder, pooling aggregator, model description for the manifest, aggregator label,
    the checkpoint's own sampling or None)."""
    from video_retrieval.encoders import create_encoder
    from video_retrieval.temporal import build_aggregator

    kind = checkpoint_kind(cfg.checkpoint) if cfg.checkpoint else None
    if kind == "moment":
        raise UserError(
            f"{cfg.checkpoint} is a moment-head checkpoint (for vr localize --checkpoint); "
            "vr index takes a vr train retrieval checkpoint or CLIP weights"
        )
    if kind == "retrieval":
        if cfg.model or cfg.pretrained or cfg.random_weights or cfg.backend != "open_clip":
            raise UserError(
                f"--checkpoint {cfg.checkpoint} is a vr train checkpoint and names its own "
                "model: drop --model/--pretrained/--random-weights/--backend"
            )
        from video_retrieval.model_io import load_retrieval_model

        ckpt = Path(cfg.checkpoint).expanduser().resolve()
        encoder, agg, meta = load_retrieval_model(str(ckpt), cfg.device, cfg.precision)
        sha = _file_sha256(ckpt)
        info = {
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha,
            "weights": describe_weights(None, str(ckpt)),
        }
        if agg.query_dependent:
            pool, label = build_aggregator("mean", encoder.embed_dim), "mean"
        else:
            pool, label = agg.eval(), f"{agg.name}@{sha[:16]}"
        own = {"num_frames": meta["num_frames"], "symmetric_window": meta["symmetric_window"]}
    else:
        if cfg.encoder_spec:
            args = {**cfg.encoder_spec, "precision": cfg.precision, "device": cfg.device}
        else:
            args = resolve_encoder_args(
                cfg.model, cfg.pretrained, cfg.checkpoint, cfg.backend, cfg.random_weights
            )
            args.update(precision=cfg.precision, device=cfg.device)
        encoder = create_encoder(**args)
        info = {"encoder_spec": encoder.spec, "weights": describe_weights(encoder.spec)}
        pool, label = build_aggregator("mean", encoder.embed_dim), "mean"
        own = None
    encoder.eval()
    return encoder, pool.eval(), info, label, own


def with_checkpoint_sampling(cfg: IndexConfig, own: dict | None) -> IndexConfig:
    """A checkpoint's own frame sampling is the default when indexing with it."""
    if own is None or cfg.fps is not None or cfg.num_frames is not None:
        return cfg
    sym = own.get("symmetric_window") if cfg.symmetric_window is None else cfg.symmetric_window
    return replace(cfg, num_frames=int(own["num_frames"]), symmetric_window=bool(sym))


def make_fingerprint(encoder, cfg: IndexConfig, aggregator_label: str) -> dict:
    patches = int(cfg.patches or 0)
    if patches < 0:
        raise UserError(f"--patches must be >= 0, got {cfg.patches}")
    fp = {
        "encoder": encoder.fingerprint(),
        "sampling": cfg.sampling(),
        "aggregator": aggregator_label,
    }
    if patches:  # an index with patch tokens is another index (UCoFiA can rerank it)
        fp["patches"] = {"topk": patches, "criterion": "cosine-to-cls"}
    return fp


_FLAG_OF = {
    "encoder": "the model (--model/--pretrained/--checkpoint)",
    "aggregator": "the checkpoint (--checkpoint)",
    "sampling": "the sampling (--fps/--num-frames)",
    "patches": "the patch tokens (--patches)",
}


def _sampling_line(sampling: dict) -> str:
    if sampling.get("num_frames"):
        return f"--num-frames {sampling['num_frames']}"
    return f"--fps {sampling.get('fps')}"


def mismatch_error(index_dir, manifest: dict, keys: list[str]) -> UserError:
    built = manifest_weights(manifest)
    what = ", ".join(_FLAG_OF.get(k, k) for k in keys)
    return UserError(
        f"index {index_dir} was built with {weights_line(built)}, "
        f"{_sampling_line(manifest['fingerprint'].get('sampling') or {})}; this run differs in "
        f"{what}: drop those flags to reuse the index's own settings, or use another --index"
    )


# -- reader -------------------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    if isinstance(exc, VideoDecodeError):
        return exc.reason
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def read_sampled_frames(path, sampling: dict, size: int | None):
    """``decode.load_frames`` with an index's sampling settings; a file whose decodable part
    falls short of the container's declared duration by more than ``TRUNCATION_SLACK_S``
    raises ``VideoDecodeError`` (truncated files are failures, not short videos)."""
    from video_retrieval.decode import load_frames, probe_video, symmetric_bounds

    start = end = None
    if sampling.get("symmetric_window"):
        start, end = symmetric_bounds(probe_video(path))
    fr = load_frames(
        path,
        num_frames=sampling.get("num_frames"),
        fps=sampling.get("fps"),
        start=start,
        end=end,
        size=size,
    )
    declared = float(getattr(fr, "header_duration", 0.0) or 0.0)
    if declared > 0 and declared - fr.duration > TRUNCATION_SLACK_S:
        raise VideoDecodeError(
            path,
            f"truncated: decodable frames end at {fr.duration:.2f}s of the {declared:.2f}s the "
            "container declares",
        )
    return fr


class VideoReader(torch.utils.data.Dataset):
    """Item ``i``: dict(path, size, mtime_ns, sha256, pixels uint8 [T,H,W,3], timestamps,
    duration, fps) or dict(..., error=reason)."""

    def __init__(self, items: list[dict], sampling: dict, image_size: int | None):
        self.items = items
        self.sampling = sampling
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.items[i])
        try:
            if not item.get("sha256"):
                item["sha256"] = content_hash(item["path"])
            fr = read_sampled_frames(item["path"], self.sampling, self.image_size)
            mask = np.asarray(fr.mask, dtype=bool)
            pixels = np.ascontiguousarray(fr.pixels[mask])
            if len(pixels) == 0:
                raise VideoDecodeError(item["path"], "no frames could be decoded")
            item.update(
                pixels=torch.from_numpy(pixels),
                timestamps=[float(t) for t in np.asarray(fr.timestamps)[mask]],
                duration=float(fr.duration),
                fps=float(fr.fps),
            )
        except Exception as exc:  # one bad video never aborts the batch
            item["error"] = _reason(exc)
        return item


def list_collate(batch: list[dict]) -> list[dict]:
    return batch


def _worker_init(_):
    torch.set_num_threads(1)


def make_loader(items, sampling, image_size, workers: int, batch_size=None):
    ds = VideoReader(items, sampling, image_size)
    kw = {}
    if workers > 0:
        kw = {"prefetch_factor": 4, "persistent_workers": False, "worker_init_fn": _worker_init}
    if batch_size is None:
        return torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=workers, collate_fn=_identity, **kw
        )
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, collate_fn=list_collate, **kw
    )


def _identity(x):
    return x


# -- mapper -------------------------------------------------------------------------------------
class BatchingEncoder:
    """Preprocess each video's frames and encode frames in batches of ``batch_size`` across
    videos; ``add`` / ``flush`` return the videos whose frames are all encoded, in order, as
    ``(item, embeddings float32 [T,D], patches float32 [T,K,D] or None)`` (``patch_topk`` = K:
    the projected patch tokens most cosine-similar to each frame's CLS)."""

    def __init__(self, encoder, batch_size: int = 64, patch_topk: int = 0):
        self.encoder = encoder
        self.batch_size = max(1, int(batch_size))
        self.patch_topk = int(patch_topk)
        self.pending: deque = deque()  # [item, images [T,3,S,S], parts, n_done]
        self.queued = 0
        self.frames_encoded = 0

    def add(self, item: dict) -> list:
        images = self.encoder.preprocess(item.pop("pixels"))
        self.pending.append([item, images, [], 0])
        self.queued += len(images)
        out = []
        while self.queued >= self.batch_size:
            out += self._step(self.batch_size)
        return out

    def flush(self) -> list:
        out = []
        while self.queued > 0:
            out += self._step(min(self.batch_size, self.queued))
        return out

    @torch.inference_mode()
    def _step(self, n: int) -> list:
        chunks, owners = [], []
        need = n
        for entry in self.pending:
            if need == 0:
                break
            _, images, _, done = entry
            take = min(need, len(images) - done)
            if take > 0:
                chunks.append(images[done : done + take])
                owners.append((entry, take))
                need -= take
        emb, pt = self.encoder.encode_images(torch.cat(chunks), return_patches=self.patch_topk > 0)
        if pt is not None:
            from video_retrieval.feature_cache import select_topk_patches

            pt = select_topk_patches(emb, pt, self.patch_topk)[0].float().cpu().numpy()
        emb = emb.float().cpu().numpy()
        pos = 0
        for entry, take in owners:
            entry[2].append((emb[pos : pos + take], None if pt is None else pt[pos : pos + take]))
            entry[3] += take
            pos += take
        self.queued -= n
        self.frames_encoded += n
        out = []
        while self.pending and self.pending[0][3] == len(self.pending[0][1]):
            item, _, parts, _ = self.pending.popleft()
            patches = None if parts[0][1] is None else np.concatenate([p for _, p in parts])
            out.append((item, np.concatenate([e for e, _ in parts]), patches))
        return out


def encode_videos(encoder, items: list[dict], batch_size: int, patch_topk: int = 0) -> list:
    """Encode a list of read items: ``(item, emb, patches)`` for good ones, ``(item, None,
    None)`` for failures."""
    be = BatchingEncoder(encoder, batch_size, patch_topk)
    out = []
    for item in items:
        if "error" in item:
            out.append((item, None, None))
        else:
            out += be.add(item)
    out += be.flush()
    return out


# -- writer -------------------------------------------------------------------------------------
class ShardWriter:
    """Buffers encoded videos into shards; each shard is written atomically, then committed."""

    def __init__(self, index_dir, run: int, rank: int = 0, shard_size=64, shard_frames=8192):
        self.index_dir = Path(index_dir)
        self.run, self.rank = run, rank
        self.shard_size, self.shard_frames = shard_size, shard_frames
        self.journal = store.Journal(index_dir, run, rank)
        self.seq = 0
        self.buffer: list[tuple[dict, np.ndarray, np.ndarray | None]] = []
        self.nframes = 0
        self.videos_written = 0
        self.frames_written = 0
        self.failures: list[dict] = []

    def add(self, item: dict, emb: np.ndarray, patches: np.ndarray | None = None) -> None:
        pt = None if patches is None else np.asarray(patches, dtype=np.float16)
        self.buffer.append((item, np.asarray(emb, dtype=np.float16), pt))
        self.nframes += len(emb)
        if len(self.buffer) >= self.shard_size or self.nframes >= self.shard_frames:
            self.flush()

    def fail(self, item: dict, reason: str) -> None:
        ev = {"event": "fail", "path": item["path"], "reason": reason}
        ev.update({k: item.get(k) for k in ("size", "mtime_ns", "sha256")})
        self.journal.append(ev)
        self.failures.append({"path": item["path"], "reason": reason})

    def flush(self) -> None:
        if not self.buffer:
            return
        name = store.shard_name(self.run, self.rank, self.seq)
        self.seq += 1
        metas, offset = [], 0
        for item, emb, _ in self.buffer:
            metas.append(
                {
                    "path": item["path"],
                    "size": item["size"],
                    "mtime_ns": item["mtime_ns"],
                    "sha256": item["sha256"],
                    "offset": offset,
                    "length": len(emb),
                    "timestamps": item["timestamps"],
                    "duration": item["duration"],
                    "fps": item["fps"],
                }
            )
            offset += len(emb)
        patches = None
        if self.buffer[0][2] is not None:
            patches = np.concatenate([p for _, _, p in self.buffer])
        frames = np.concatenate([e for _, e, _ in self.buffer])
        store.write_shard(self.index_dir, name, frames, metas, patches)
        keys = ("path", "size", "mtime_ns", "sha256", "offset", "length")
        self.journal.append(
            {"event": "shard", "shard": name, "videos": [{k: m[k] for k in keys} for m in metas]}
        )
        self.videos_written += len(metas)
        self.frames_written += offset
        self.buffer, self.nframes = [], 0


# -- plan ---------------------------------------------------------------------------------------
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
                    "reason": _reason(exc),
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


# -- finalize -----------------------------------------------------------------------------------
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
    from video_retrieval.ann import DEFAULT_TARGET_RECALL, AnnOptions, describe, parse_memory

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
        from video_retrieval.search import read_query_file

        read_query_file(cfg.recall_captions, "--recall-captions")
    elif cfg.recall_captions:
        opts.text_queries = encode_recall_captions(
            encoder, aggregator, cfg.recall_captions, opts.sample
        )
    return opts


@torch.no_grad()
def encode_recall_captions(encoder, aggregator, path, limit: int) -> np.ndarray:
    """Sentence embeddings [Q,D] of (at most ``limit``, evenly spread) captions of ``path``."""
    from video_retrieval.search import encode_queries, read_query_file

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
    from video_retrieval.ann import AnnOptions, build_measured, save_ann

    index_dir = Path(index_dir)
    paths = sorted(state.videos)
    metas: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    videos, frames = [], []
    for path in paths:
        e = state.videos[path]
        sh = e["shard"]
        if sh not in metas:
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
    store.atomic_save_npy(index_dir / files["pooled"], pooled)
    store.atomic_write_json(index_dir / files["videos"], videos)
    opts = ann_kind if isinstance(ann_kind, AnnOptions) else AnnOptions(kind=ann_kind or "auto")
    ann, ann_info = build_measured(
        pooled, opts, log=lambda line: print(f"warning: {line}", file=sys.stderr)
    )
    save_ann(ann, index_dir / files["ann"])
    fail_lines = "".join(
        json.dumps({"path": p, "reason": f.get("reason", "")}, sort_keys=True) + "\n"
        for p, f in sorted(state.failures.items())
    )
    store.atomic_write_bytes(index_dir / store.FAILURES, fail_lines.encode())
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
        "complete": True,
    }
    store.atomic_write_json(index_dir / store.MANIFEST, manifest)  # the switch
    store.remove_stale_generations(index_dir, manifest)
    return manifest


# -- encoding loops -----------------------------------------------------------------------------
def _encode_local(
    items, cfg: IndexConfig, encoder, index_dir, run: int, progress: bool
) -> ShardWriter:
    writer = ShardWriter(index_dir, run, 0, cfg.shard_size, cfg.shard_frames)
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


# -- the whole run ------------------------------------------------------------------------------
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
    from video_retrieval import index_distributed as ddp

    cfg = cfg or IndexConfig()
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
    store.clean_temp_files(index_dir)
    manifest = store.read_manifest(index_dir)
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
        store.atomic_write_json(index_dir / store.MANIFEST, manifest)
    warn_if_random(manifest_weights(manifest))
    return encoder, pool_agg, cfg, manifest


def _run_locked(paths: list[Path], index_dir: Path, cfg: IndexConfig) -> dict:
    t_start = time.perf_counter()
    encoder, pool_agg, cfg, manifest = _open_for_writing(index_dir, cfg)
    ann_opts = ann_options(cfg, encoder, pool_agg, manifest)
    state = store.replay(index_dir)
    todo, events, counts = make_plan(paths, state, cfg.prune)
    store.remove_orphans(index_dir, state, keep=store.referenced_shards(index_dir, manifest))
    run = store.next_run_id(index_dir)
    config_event = {
        "event": "config",
        "fingerprint": manifest["fingerprint"],
        "model": manifest["model"],
        "embed_dim": manifest["embed_dim"],
    }
    store.Journal(index_dir, run, 0).append(config_event, *events)

    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    t_enc = time.perf_counter()
    from video_retrieval import index_distributed as ddp

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
        }
        ddp.predict_distributed(plan, IndexConfig(**conf), encoder)
    else:
        _encode_local(todo, cfg, encoder, index_dir, run, progress)
    enc_seconds = time.perf_counter() - t_enc

    state = store.replay(index_dir)
    new_paths = {it["path"] for it in todo}
    encoded_now = [
        v
        for p, v in state.videos.items()
        if p in new_paths and v["shard"].startswith(f"{run:05d}-")
    ]
    frames_now = int(sum(v["length"] for v in encoded_now))
    manifest = finalize(index_dir, state, pool_agg, manifest, ann_opts)
    store.remove_orphans(index_dir, state)
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


# -- repair -------------------------------------------------------------------------------------
def _verify_shard(index_dir, name: str, entries: list[dict], patches: bool) -> str | None:
    """Why shard ``name`` cannot serve ``entries`` (its journal lines), or None when it can."""
    try:
        meta = {v["path"]: v for v in store.load_shard_meta(index_dir, name)["videos"]}
        rows = store.load_shard_frames(index_dir, name).shape[0]
        if patches:
            rows = min(rows, store.load_shard_patches(index_dir, name).shape[0])
    except (UserError, KeyError, TypeError) as exc:
        return str(exc).split(";")[0]
    for e in entries:
        m = meta.get(e["path"])
        if m is None or (m["offset"], m["length"]) != (e["offset"], e["length"]):
            return f"shard {name} metadata does not match the journal"
        if rows < e["offset"] + e["length"]:
            return f"shard {name} is truncated"
    return None


def run_repair(index_dir, cfg: IndexConfig | None = None) -> dict:
    """Rebuild what can be rebuilt from the shards and the journal: the manifest (from the last
    run's recorded settings), videos/pooled/ann, failures.jsonl. Videos whose shard is missing or
    damaged are dropped and listed (``lost``): index their files again to re-encode them."""
    cfg = cfg or IndexConfig()
    index_dir = Path(index_dir).expanduser().resolve()
    if not index_dir.is_dir() or not store.is_index_dir(index_dir):
        raise UserError(f"{index_dir} is not an index folder (nothing to repair)")
    with store.IndexLock(index_dir, wait=cfg.wait):
        store.clean_temp_files(index_dir)
        state = store.replay(index_dir)
        try:
            manifest = store.read_manifest(index_dir)
        except store.IndexDamaged:
            manifest = None
        rebuilt_manifest = manifest is None
        if manifest is None:
            if not state.config:
                raise UserError(
                    f"cannot repair {index_dir}: manifest.json is unusable and the journal does "
                    "not record the model (an index from an older vr); build a new index"
                )
            manifest = {
                "format_version": store.FORMAT_VERSION,
                **state.config,
                "counts": {"videos": 0, "frames": 0, "shards": 0, "failures": 0},
                "complete": False,
            }
        by_shard: dict[str, list[dict]] = {}
        for v in state.videos.values():
            by_shard.setdefault(v["shard"], []).append(v)
        patches = bool(manifest["fingerprint"].get("patches"))
        lost, drops = [], []
        for name, entries in sorted(by_shard.items()):
            why = _verify_shard(index_dir, name, entries, patches)
            if why:
                for e in entries:
                    lost.append({"path": e["path"], "reason": why})
                    drops.append({"event": "drop", "path": e["path"], "reason": f"repair: {why}"})
        run = store.next_run_id(index_dir)
        store.Journal(index_dir, run, 0).append(*drops)
        state = store.replay(index_dir)
        repaired_cfg = reuse_index_settings(replace(cfg, encoder_spec=None), manifest)
        encoder, pool_agg, _, _, _ = load_models(repaired_cfg)
        opts = ann_options(cfg, encoder, pool_agg, manifest)
        manifest = finalize(index_dir, state, pool_agg, manifest, opts)
        store.remove_orphans(index_dir, state)
    return {
        "index": str(index_dir),
        "repaired": True,
        "manifest_rebuilt": rebuilt_manifest,
        "lost": lost,
        "videos": manifest["counts"]["videos"],
        "frames": manifest["counts"]["frames"],
        "ann": manifest["ann"],
        "weights": manifest_weights(manifest),
    }
