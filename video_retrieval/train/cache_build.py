"""Building the frozen-feature cache (format: ``cache_settings``): decode each video once,
encode its frames (and, with ``patches``, patch tokens) and the captions with a frozen CLIP, and
write them into preallocated memmaps.

Resumable: each finished chunk is flushed and appended to ``journal.jsonl`` (fsync'd), so a rerun
after a crash or ``kill -9`` skips the finished chunks and produces the same arrays as an
uninterrupted run. The manifest is written temp-then-rename. A video that fails to decode never
aborts the build: it is recorded in the manifest's ``failures`` (index, id, path, reason), its
mask is all False and ``video_failed`` True. One builder at a time per folder (a lock file).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from video_retrieval.encoders.patches import select_topk_patches
from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_write_json
from video_retrieval.train.cache_encode import decode_one, encode_valid_frames, probe_dims
from video_retrieval.train.cache_settings import (
    ARRAY_FILES,
    FORMAT_NAME,
    FORMAT_VERSION,
    JOURNAL,
    LOCK,
    MANIFEST,
    TOPK_CRITERION,
    BuildReport,
    CacheSettings,
    CaptionItem,
    VideoItem,
    encoder_fingerprint,
    jsonable,
)


def _read_journal(path: Path) -> list[dict]:
    """Entries of the progress journal; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    entries = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "kind" in entry and "start" in entry:
                entries.append(entry)
    return entries


class _NotResumable(Exception):
    """The arrays of an interrupted build are missing or malformed: start the build afresh."""


class _Arrays:
    """The preallocated memmaps of one build."""

    def __init__(self, out: Path, shapes: dict[str, tuple[tuple[int, ...], str]], create: bool):
        self.out = out
        self.arrays: dict[str, np.memmap] = {}
        for name, (shape, dtype) in shapes.items():
            path = out / f"{name}.npy"
            if create:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
            else:
                try:
                    arr = np.load(path, mmap_mode="r+")
                except (OSError, ValueError) as exc:
                    raise _NotResumable(f"{path}: {exc}") from exc
                if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                    raise _NotResumable(f"{path}: {arr.shape} {arr.dtype} != {shape} {dtype}")
            self.arrays[name] = arr

    def __getitem__(self, name):
        return self.arrays[name]

    def __contains__(self, name):
        return name in self.arrays

    def flush(self):
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap) and arr.size:
                arr.flush()

    def close(self):
        self.flush()
        self.arrays.clear()


def _build_key(fingerprint, settings, videos, captions) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([fingerprint, asdict(settings)], sort_keys=True).encode())
    for v in videos:
        h.update(json.dumps([v.id, v.path, v.split, v.start, v.end]).encode())
    for c in captions:
        h.update(json.dumps([c.text, c.video_index, c.split]).encode())
    return h.hexdigest()


def build_cache(
    encoder,
    videos: Sequence[VideoItem],
    captions: Sequence[CaptionItem] = (),
    out_dir: str | os.PathLike = "cache",
    settings: CacheSettings | None = None,
    **kwargs,
) -> BuildReport:
    """Encode ``videos`` and ``captions`` with the frozen ``encoder`` into ``out_dir``.

    Reruns resume an interrupted build with the same inputs and settings; a finished cache with the
    same inputs is left untouched (``up_to_date``). Different inputs or a different model in an
    existing cache directory are refused unless ``overwrite``. ``on_chunk(kind, start, end)`` is
    called after each chunk is durably recorded (``kind`` is "video" or "text"). Keyword options:
    ``batch_size`` (frames per encoder call), ``chunk_size`` (videos per journaled chunk),
    ``text_chunk_size``, ``num_workers`` (decoding threads), ``overwrite``, ``load_frames``
    (decoder override), ``on_chunk``, ``log``. Two builds of one directory at once are refused.
    """
    out = Path(out_dir)
    if (
        out.exists()
        and not (out / MANIFEST).exists()
        and any(p.name != LOCK for p in out.iterdir())
        and not kwargs.get("overwrite", False)
    ):
        raise UserError(f"{out} exists and is not a feature cache; choose an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another `vr cache` is building this cache right now") from None
        try:
            return _build_cache_locked(encoder, videos, captions, out, settings, **kwargs)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _build_cache_locked(
    encoder,
    videos: Sequence[VideoItem],
    captions: Sequence[CaptionItem] = (),
    out_dir: str | os.PathLike = "cache",
    settings: CacheSettings | None = None,
    *,
    batch_size: int = 64,
    chunk_size: int = 16,
    text_chunk_size: int = 256,
    num_workers: int = 2,
    overwrite: bool = False,
    load_frames: Callable | None = None,
    on_chunk: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildReport:
    t0 = time.perf_counter()
    settings = settings or CacheSettings()
    videos = [v if isinstance(v, VideoItem) else VideoItem(**v) for v in videos]
    captions = [c if isinstance(c, CaptionItem) else CaptionItem(**c) for c in captions]
    if not videos:
        raise UserError("no videos to cache")
    for j, c in enumerate(captions):
        if not 0 <= int(c.video_index) < len(videos):
            raise UserError(
                f"caption {j} refers to video {c.video_index}, outside 0..{len(videos) - 1}"
            )
        if not str(c.text).strip():
            raise UserError(f"caption {j} (video {videos[c.video_index].id}) is empty")
    if load_frames is None:
        from video_retrieval.media.decode import load_frames
    log = log or (lambda msg: None)
    batch_size, chunk_size, text_chunk_size = int(batch_size), int(chunk_size), int(text_chunk_size)
    if min(batch_size, chunk_size, text_chunk_size) < 1:
        raise UserError("batch and chunk sizes must be >= 1")

    out = Path(out_dir)
    fingerprint = encoder_fingerprint(encoder)
    key = _build_key(fingerprint, settings, videos, captions)
    manifest_path, journal_path = out / MANIFEST, out / JOURNAL

    resume = False
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        same = old.get("build_key") == key and old.get("format_version") == FORMAT_VERSION
        if same and not overwrite:
            if old.get("status") == "complete":
                log(f"{out}: up to date ({len(videos)} videos, {len(captions)} captions)")
                return BuildReport(
                    str(out), len(videos), len(captions), old.get("failures", []),
                    up_to_date=True, seconds=time.perf_counter() - t0,
                )  # fmt: skip
            resume = True
        elif not overwrite:
            why = (
                "a different model"
                if old.get("fingerprint") not in (None, fingerprint)
                else "different videos, captions or settings"
            )
            raise UserError(
                f"{out} already holds a feature cache built with {why}; use --overwrite or another --out"
            )

    if not resume and out.exists():
        for name in ARRAY_FILES:
            (out / f"{name}.npy").unlink(missing_ok=True)
        for path in (manifest_path, journal_path):
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    d, p, length = probe_dims(encoder, settings, need_text=bool(captions))
    nv, nt, t = len(videos), len(captions), settings.frames_per_video
    kp = p if settings.patches == "all" else min(int(settings.patch_topk), p)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {
        "video_frames": ((nv, t, d), "float16"),
        "video_mask": ((nv, t), "bool"),
        "video_timestamps": ((nv, t), "float32"),
        "video_duration": ((nv,), "float32"),
        "video_failed": ((nv,), "bool"),
        "text_sentence": ((nt, d), "float16"),
        "text_to_video": ((nt,), "int64"),
    }
    if settings.patches != "none":
        shapes["video_patches"] = ((nv, t, kp, d), "float16")
    if settings.patches == "topk":
        shapes["video_patch_index"] = ((nv, t, kp), "int16")
    if nt and settings.words:
        shapes["text_words"] = ((nt, length, d), "float16")
        shapes["text_word_mask"] = ((nt, length), "bool")

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "status": "building",
        "build_key": key,
        "fingerprint": fingerprint,
        "encoder_spec": jsonable(getattr(encoder, "spec", {})),
        # the autocast really used (spec "auto" resolves per machine): bf16 features differ a bit
        "encoder_autocast": str(getattr(encoder, "autocast_dtype", None)),
        "embed_dim": d,
        "sampling": {
            "num_frames": settings.num_frames,
            "fps": settings.fps,
            "max_frames": settings.max_frames,
            "frames_per_video": t,
            "decode_size": settings.decode_size,
            "frame_size": settings.frame_size,
            "symmetric_window": settings.symmetric_window,
        },
        "patches": {
            "mode": settings.patches,
            "patches_per_frame": p,
            "stored_per_frame": kp if settings.patches != "none" else 0,
            "topk": kp if settings.patches == "topk" else None,
            "criterion": TOPK_CRITERION if settings.patches == "topk" else None,
        },
        "text": {
            "max_words": settings.max_words,
            "words": bool(nt and settings.words),
            "word_length": length,
        },
        "settings": asdict(settings),
        "counts": {"videos": nv, "texts": nt, "failed": 0},
        "arrays": {name: {"shape": list(s), "dtype": dt} for name, (s, dt) in shapes.items()},
        "videos": [asdict(v) for v in videos],
        "captions": [asdict(c) for c in captions],
        "failures": [],
    }
    arrays = None
    if resume:
        try:
            arrays = _Arrays(out, shapes, create=False)
        except _NotResumable as exc:
            log(f"{out}: cannot resume ({exc}); starting afresh")
            resume = False
            journal_path.unlink(missing_ok=True)
    if not resume:
        atomic_write_json(manifest_path, manifest, sort_keys=False)
        arrays = _Arrays(out, shapes, create=True)
    arrays["text_to_video"][:] = np.asarray([c.video_index for c in captions], dtype=np.int64)
    arrays.flush()

    journal = _read_journal(journal_path) if resume else []
    covered = {"video": np.zeros(nv, dtype=bool), "text": np.zeros(nt, dtype=bool)}
    for entry in journal:
        if entry["kind"] in covered:
            covered[entry["kind"]][int(entry["start"]) : int(entry["end"])] = True
    failures = {int(f["index"]): f for e in journal for f in e.get("failures", [])}
    report = BuildReport(str(out), nv, nt, resumed=resume)
    if resume:
        log(f"{out}: resuming ({int(covered['video'].sum())}/{nv} videos and "
            f"{int(covered['text'].sum())}/{nt} captions already done)")  # fmt: skip

    lock = threading.Lock()
    with open(journal_path, "a") as jf:

        def record(kind, start, end, chunk_failures=()):
            arrays.flush()
            entry = {"kind": kind, "start": start, "end": end, "failures": list(chunk_failures)}
            with lock:
                jf.write(json.dumps(entry) + "\n")
                jf.flush()
                os.fsync(jf.fileno())
            if on_chunk is not None:
                on_chunk(kind, start, end)

        # -- videos: decode the next chunk in threads while this one is encoded ---------------
        video_chunks = [
            (s, min(s + chunk_size, nv)) for s in range(0, nv, chunk_size)
            if not covered["video"][s : s + chunk_size].all()
        ]  # fmt: skip
        want_patches = settings.patches != "none"
        with ThreadPoolExecutor(max_workers=max(1, int(num_workers))) as pool:

            def submit(chunk):
                s, e = chunk
                return [
                    pool.submit(decode_one, load_frames, videos[i], settings) for i in range(s, e)
                ]

            pending = submit(video_chunks[0]) if video_chunks else None
            for n, (s, e) in enumerate(video_chunks):
                decoded = [f.result() for f in pending]
                pending = submit(video_chunks[n + 1]) if n + 1 < len(video_chunks) else None
                encoded = encode_valid_frames(encoder, decoded, batch_size, want_patches)
                chunk_failures = []
                frames = np.zeros((e - s, t, d), np.float16)
                patches_np = np.zeros((e - s, t, kp, d), np.float16) if want_patches else None
                pidx = np.zeros((e - s, t, kp), np.int16) if settings.patches == "topk" else None
                for j, (dec, enc) in enumerate(zip(decoded, encoded)):
                    i = s + j
                    if dec.reason is not None:
                        f = {
                            "index": i,
                            "id": videos[i].id,
                            "path": videos[i].path,
                            "reason": dec.reason,
                        }
                        chunk_failures.append(f)
                        failures[i] = f
                        continue
                    cls, pt = enc
                    frames[j, dec.mask] = cls.numpy().astype(np.float16)
                    if settings.patches == "all":
                        patches_np[j, dec.mask] = pt.numpy().astype(np.float16)
                    elif settings.patches == "topk":
                        kept, idx = select_topk_patches(cls, pt, kp)
                        patches_np[j, dec.mask] = kept.numpy().astype(np.float16)
                        pidx[j, dec.mask] = idx.numpy().astype(np.int16)
                arrays["video_frames"][s:e] = frames
                arrays["video_mask"][s:e] = np.stack([dec.mask for dec in decoded])
                arrays["video_timestamps"][s:e] = np.stack([dec.timestamps for dec in decoded])
                arrays["video_duration"][s:e] = np.asarray([dec.duration for dec in decoded])
                arrays["video_failed"][s:e] = np.asarray(
                    [dec.reason is not None for dec in decoded]
                )
                if want_patches:
                    arrays["video_patches"][s:e] = patches_np
                if pidx is not None:
                    arrays["video_patch_index"][s:e] = pidx
                for f in chunk_failures:
                    log(f"warning: {f['path']}: {f['reason']} (masked out)")
                record("video", s, e, chunk_failures)
                report.video_chunks_done += 1
                log(f"videos {e}/{nv}")

        # -- captions ------------------------------------------------------------------------
        for s in range(0, nt, text_chunk_size):
            e = min(s + text_chunk_size, nt)
            if covered["text"][s:e].all():
                continue
            texts = [captions[j].text for j in range(s, e)]
            tokens = encoder.tokenize(texts, context_length=settings.max_words)
            with torch.no_grad():
                tf = encoder.encode_text(tokens, return_words=settings.words)
            arrays["text_sentence"][s:e] = (
                tf.sentence.detach().float().cpu().numpy().astype(np.float16)
            )
            if "text_words" in arrays:
                words = tf.words.detach().float().cpu()[:, :length]
                arrays["text_words"][s:e] = words.numpy().astype(np.float16)
                wm = tf.word_mask
                if wm is None:  # fall back to the tokens: real tokens are non-zero ids
                    wm = tokens[:, :length] != 0
                arrays["text_word_mask"][s:e] = wm.detach().cpu().bool().numpy()[:, :length]
            record("text", s, e)
            report.text_chunks_done += 1
            log(f"captions {e}/{nt}")

    arrays.close()
    manifest["status"] = "complete"
    manifest["failures"] = [failures[i] for i in sorted(failures)]
    manifest["counts"]["failed"] = len(failures)
    manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write_json(manifest_path, manifest, sort_keys=False)
    report.failures = manifest["failures"]
    report.seconds = time.perf_counter() - t0
    return report
